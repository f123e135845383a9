//! The desired load: the part of the configuration that may change while the daemon runs.
//!
//! The config file, the command line, profiles, reloads and the APIs all produce a [`Load`]
//! through [`Load::validate`] and [`Limits::check`], so one set of rules (and one set of field
//! names) guards every source.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::session::settings::Network;

/// Upper bounds that keep a typo from asking for something no machine can do.
pub const MAX_USERS: u32 = 10_000_000;
pub const MAX_CONNECT_RATE: f64 = 1_000_000.0;
/// Slowest connect rate: one connect per 1000 s. Below it the spacing of connects is no
/// longer a duration anyone means (1e-300/s is one connect in 10^292 years).
pub const MIN_CONNECT_RATE: f64 = 0.001;
pub const MAX_PAYLOAD_SIZE: usize = 1 << 20;
pub const MIN_MESSAGE_INTERVAL: Duration = Duration::from_millis(1);
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_ROOM_SIZE: u32 = 1_000_000;
/// Longest message or heartbeat interval: a user that waits longer is idle, say so with 0s.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest timeout or window any setting may take (connect, ack, loss grace, drain, ...).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a profile stage, a ramp, a connection lifetime or a run may last: 30 days. Every
/// deadline the daemon computes stays far inside what a monotonic clock can represent.
pub const MAX_SPAN: Duration = Duration::from_secs(30 * 24 * 3600);

/// Checks that `value` is within `[min, max]` (or zero, where zero means "off").
pub fn check_duration(
    field: &str,
    value: Duration,
    min: Duration,
    max: Duration,
    zero_means: Option<&str>,
) -> Result<(), LoadError> {
    let fmt = humantime::format_duration;
    if (value.is_zero() && zero_means.is_some()) || (value >= min && value <= max) {
        return Ok(());
    }
    let range = format!("between {} and {}", fmt(min), fmt(max));
    Err(LoadError::new(
        field,
        match zero_means {
            Some(off) => format!("must be 0s ({off}) or {range}, got {}", fmt(value)),
            None => format!("must be {range}, got {}", fmt(value)),
        },
    ))
}

/// Declares the live fields — the ones a running fleet can change — once: [`Load`] (each field
/// with its docs and serde form), [`LoadPatch`] (each `Option`al, with its bounds for the API
/// docs), and what is done with every field alike (patching, diffing, describing). Adding a
/// live field is one entry here and its rule in [`Load::validate`].
macro_rules! live_fields {
    ($(
        $(#[$load:meta])*
        $name:ident: $ty:ty,
        patch: { $(#[$patch:meta])* }
    );+ $(;)?) => {
        /// What the fleet should be doing right now.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub struct Load {
            $($(#[$load])* pub $name: $ty,)+
        }

        /// A partial update of [`Load`], as `PATCH /api/v1/load`, profile stages and reloads
        /// give it. Durations are strings such as "250ms" or "1m". The bounds are
        /// [`Load::validate`]'s.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct LoadPatch {
            $(
                $(#[$patch])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<$ty>,
            )+
            /// Changes of single groups, by name (`{"groups": {"chatters": {"users": 500}}}`):
            /// the fields a group is given are its own from then on (the rest follow the
            /// fleet's); `users` makes it hold that count instead of its share.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            #[schema(no_recursion)]
            pub groups: BTreeMap<String, LoadPatch>,
        }

        /// Every field of a load, as a patch.
        impl From<&Load> for LoadPatch {
            fn from(load: &Load) -> Self {
                LoadPatch { $($name: Some(load.$name),)+ groups: BTreeMap::new() }
            }
        }

        impl LoadPatch {
            /// The fields that differ from `old` in `new`, with `new`'s values.
            pub fn between(old: &Load, new: &Load) -> LoadPatch {
                LoadPatch {
                    $($name: (old.$name != new.$name).then_some(new.$name),)+
                    groups: BTreeMap::new(),
                }
            }

            /// This patch's fields with `later`'s set over them (groups left out).
            pub fn merged(&self, later: &LoadPatch) -> LoadPatch {
                LoadPatch { $($name: later.$name.or(self.$name),)+ groups: BTreeMap::new() }
            }
        }

        impl Load {
            /// The names of the live fields, as the API spells them.
            pub const FIELDS: &[&str] = &[$(stringify!($name)),+];

            /// This load with `patch`'s fields put in, unchecked (its groups are not this
            /// load's business: [`crate::groups::FleetLoad::apply`]).
            pub fn patched(&self, patch: &LoadPatch) -> Load {
                Load { $($name: patch.$name.unwrap_or(self.$name),)+ }
            }

            /// (field, old, new) for a person, for every field.
            fn shown(&self, next: &Load) -> Vec<(&'static str, String, String)> {
                vec![$((stringify!($name), Shown::show(&self.$name), Shown::show(&next.$name))),+]
            }
        }
    };
}

live_fields! {
    /// Number of simulated users to keep connected.
    users: u32,
    patch: {
        /// Users to keep connected (0..=10000000, and at most `limits.max_users`).
        #[schema(minimum = 0, maximum = 10_000_000)]
    };
    /// Connection attempts per second, for ramping up, ramping down and reconnecting.
    connect_rate: f64,
    patch: {
        /// Connection attempts per second (0.001..=1000000).
        #[schema(minimum = 0.001, maximum = 1_000_000)]
    };
    /// Time between two messages of one user; zero sends no messages.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1s")]
    message_interval: Duration,
    patch: {
        /// Time between two messages of one user: "0s" (none) or 1ms..1h.
        #[serde(with = "humantime_serde")]
        #[schema(value_type = Option<String>, example = "1s")]
    };
    /// Bytes of padding carried by each message.
    payload_size: usize,
    patch: {
        /// Bytes of padding per message (0..=1048576).
        #[schema(minimum = 0, maximum = 1_048_576)]
    };
    /// Time between heartbeats of one user; zero turns the heartbeat off.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    heartbeat_interval: Duration,
    patch: {
        /// Time between heartbeats: "0s" (off) or 100ms..1h.
        #[serde(with = "humantime_serde")]
        #[schema(value_type = Option<String>, example = "10s")]
    };
    /// Users per room; changing it moves users whose room changes (they reconnect).
    room_size: u32,
    patch: {
        /// Users per room (1..=1000000).
        #[schema(minimum = 1, maximum = 1_000_000)]
    };
    /// The link the users sit behind (README "Weak networks"): `none`, a preset, or
    /// `{latency, jitter, down, up, stall, handover}`. It changes live only for groups whose
    /// config gave `network:` (their sockets are shaped); bytes already in the link keep
    /// the times they were given.
    #[schema(value_type = Object)]
    network: Network,
    patch: {
        /// The whole link profile: "none", a preset ("3g", "lte", ...) or {latency, jitter,
        /// down, up, stall, handover}; only for groups whose config gave `network:`.
        #[schema(value_type = Option<Object>, example = "3g")]
    };
}

/// A live value as a person reads it in the change log.
trait Shown {
    fn show(&self) -> String;
}

macro_rules! shown_as_display {
    ($($ty:ty),+) => { $(impl Shown for $ty { fn show(&self) -> String { self.to_string() } })+ };
}
shown_as_display!(u32, usize, f64);

impl Shown for Network {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Shown for Duration {
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

impl LoadPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &LoadPatch::default()
    }
}

/// What [`Load::describe_change`] says when nothing changed.
pub const NO_CHANGE: &str = "no change";

/// Hard caps no API call, profile or reload may exceed (`limits:` in the config).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most users the fleet may be asked to hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_users: Option<u32>,
    /// Most messages per second (users / message_interval) the fleet may be asked to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_rate: Option<f64>,
    /// Why `max_users` is what it is, when the config did not set it (see
    /// [`Limits::or_host_default`]).
    #[serde(skip)]
    pub default_reason: Option<String>,
}

/// The caps are what they are, whatever the reason given for them (the effective config,
/// printed and read back, is the same config).
impl PartialEq for Limits {
    fn eq(&self, other: &Limits) -> bool {
        self.max_users == other.max_users && self.max_message_rate == other.max_message_rate
    }
}

impl Limits {
    /// These limits, with `max_users` set, when the config left it out, to what `shards`
    /// processes like this one can hold ([`crate::host::default_max_users`]): a typo or one
    /// API call must not ask for millions of users nobody can hold.
    pub fn or_host_default(self, shards: u32) -> Limits {
        if self.max_users.is_some() {
            return self;
        }
        let (per_process, why) =
            crate::host::default_max_users(crate::host::fd_limit(), crate::host::memory());
        Limits {
            max_users: Some(
                u32::try_from(per_process.saturating_mul(u64::from(shards.max(1))))
                    .unwrap_or(u32::MAX)
                    .min(MAX_USERS),
            ),
            default_reason: Some(if shards > 1 {
                format!("{why}, times {shards} shards")
            } else {
                why
            }),
            ..self
        }
    }

    /// The caps themselves must be numbers a fleet can be held to.
    pub fn validate(&self) -> Result<(), LoadError> {
        if let Some(max) = self.max_users
            && max > MAX_USERS
        {
            return Err(LoadError::new(
                "limits.max_users",
                format!("must be at most {MAX_USERS}, got {max}"),
            ));
        }
        if let Some(max) = self.max_message_rate
            && !(max.is_finite() && max > 0.0)
        {
            return Err(LoadError::new(
                "limits.max_message_rate",
                format!("must be a number of messages per second above 0, got {max}"),
            ));
        }
        Ok(())
    }

    /// Checks a load against the caps; the error names the field and the cap.
    pub fn check(&self, load: &Load) -> Result<(), LoadError> {
        if let Some(max) = self.max_users
            && load.users > max
        {
            let why = self
                .default_reason
                .as_deref()
                .map_or_else(String::new, |why| format!(": {why}"));
            return Err(LoadError::new(
                "users",
                format!(
                    "{} exceeds the cap of {max} users (limits.max_users{why})",
                    load.users
                ),
            ));
        }
        if let Some(max) = self.max_message_rate {
            let rate = load.message_rate();
            if rate > max {
                return Err(LoadError::new(
                    if load.message_interval.is_zero() {
                        "users"
                    } else {
                        "message_interval"
                    },
                    format!(
                        "{} users every {} is {rate:.1} messages/s, over the cap of {max} (limits.max_message_rate)",
                        load.users,
                        humantime::format_duration(load.message_interval)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A load value that breaks a rule; names the field as the config file and the API spell it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct LoadError {
    pub field: String,
    pub problem: String,
}

impl LoadError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A change asked for while the fleet drains at the end of its run.
    pub fn draining() -> Self {
        Self::new(
            "(fleet)",
            "the fleet is draining for its final verdict; the load can no longer change",
        )
    }

    /// The same error, with its field placed under `prefix` (e.g. `stages[2].`).
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}{}", self.field),
            ..self
        }
    }
}

impl Load {
    /// Messages per second the whole fleet sends at this load.
    pub fn message_rate(&self) -> f64 {
        if self.message_interval.is_zero() {
            0.0
        } else {
            f64::from(self.users) / self.message_interval.as_secs_f64()
        }
    }

    /// Checks every rule and returns the load unchanged if all hold.
    pub fn validate(self) -> Result<Self, LoadError> {
        if self.users > MAX_USERS {
            return Err(LoadError::new(
                "users",
                format!("must be at most {MAX_USERS}, got {}", self.users),
            ));
        }
        if !(self.connect_rate.is_finite()
            && (MIN_CONNECT_RATE..=MAX_CONNECT_RATE).contains(&self.connect_rate))
        {
            return Err(LoadError::new(
                "connect_rate",
                format!(
                    "must be a number of connects per second between {MIN_CONNECT_RATE} and {MAX_CONNECT_RATE}, got {}",
                    self.connect_rate
                ),
            ));
        }
        check_duration(
            "message_interval",
            self.message_interval,
            MIN_MESSAGE_INTERVAL,
            MAX_INTERVAL,
            Some("no messages"),
        )?;
        check_duration(
            "heartbeat_interval",
            self.heartbeat_interval,
            MIN_HEARTBEAT_INTERVAL,
            MAX_INTERVAL,
            Some("off"),
        )?;
        if self.room_size == 0 || self.room_size > MAX_ROOM_SIZE {
            return Err(LoadError::new(
                "room_size",
                format!(
                    "must be between 1 and {MAX_ROOM_SIZE}, got {}",
                    self.room_size
                ),
            ));
        }
        if let Some(problem) = self.network.problem() {
            return Err(LoadError::new("network", problem));
        }
        if self.payload_size > MAX_PAYLOAD_SIZE {
            return Err(LoadError::new(
                "payload_size",
                format!(
                    "must be at most {MAX_PAYLOAD_SIZE} bytes, got {}",
                    self.payload_size
                ),
            ));
        }
        Ok(self)
    }

    /// The load after `patch`, or the first broken rule; `self` is never modified.
    /// What differs from this load in `next`, for a person: `users 10 -> 20, message_interval
    /// 1s -> 500ms` (or `no change`).
    pub fn describe_change(&self, next: &Load) -> String {
        let fields = self.shown(next);
        let changed: Vec<String> = fields
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| format!("{name} {old} -> {new}"))
            .collect();
        if changed.is_empty() {
            NO_CHANGE.into()
        } else {
            changed.join(", ")
        }
    }

    pub fn apply(&self, patch: &LoadPatch) -> Result<Load, LoadError> {
        self.patched(patch).validate()
    }
}

/// Everything the supervisor publishes to users and handlers. Users read nothing else of the
/// fleet's state: a change reaches them only through the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub load: Load,
    /// Asked to hold still: no messages, no new connections.
    pub paused: bool,
    /// The generator is overloaded: no new connections until it recovers.
    pub saturated: bool,
    /// The run is ending: no messages, no new connections; connected users settle their books.
    pub draining: bool,
    /// The last sync storm asked for, if any.
    pub disruption: Option<Disruption>,
}

/// A sync storm (`POST /api/v1/disrupt`): a share of the connected users drop at once and
/// come back within a window, as phones do after a network blip. Each user draws its own
/// part from the storm's number and its id, so nothing per user is sent or kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disruption {
    /// Numbers the storms (from 1), so a user takes part in each once.
    pub epoch: u32,
    /// The share of the connected users that drop (0..=1).
    pub share: f64,
    /// Each is back after a time drawn uniformly from zero to this.
    pub back_within: Duration,
}

impl Disruption {
    /// A uniform draw in [0, 1) for `user`, different for each storm and purpose.
    fn draw(&self, user: u32, purpose: u64) -> f64 {
        let mut x = (u64::from(self.epoch) << 32 | u64::from(user))
            ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether `user` drops in this storm.
    pub fn chooses(&self, user: u32) -> bool {
        self.draw(user, 1) < self.share
    }

    /// How long `user` stays away.
    pub fn away_for(&self, user: u32) -> Duration {
        self.back_within.mul_f64(self.draw(user, 2))
    }
}

impl Desired {
    pub fn new(load: Load) -> Desired {
        Desired {
            load,
            paused: false,
            saturated: false,
            draining: false,
            disruption: None,
        }
    }

    /// Whether a user may open a connection (or reconnect) now.
    pub fn may_connect(&self) -> bool {
        !self.paused && !self.saturated && !self.draining
    }

    /// Whether connected users send messages now.
    pub fn may_send(&self) -> bool {
        !self.paused && !self.draining
    }

    /// Whether users must react to the change from `self` to `next`: how they send, what
    /// they send, their rooms — and the user count, since the rooms of the last block gain or
    /// lose members whom its users' books must expect (the connect rate is the supervisor's
    /// business alone).
    pub fn concerns_users(&self, next: &Desired) -> bool {
        self.may_connect() != next.may_connect()
            || self.may_send() != next.may_send()
            || self.draining != next.draining
            || self.load.message_interval != next.load.message_interval
            || self.load.heartbeat_interval != next.load.heartbeat_interval
            || self.load.payload_size != next.load.payload_size
            || self.load.room_size != next.load.room_size
            || self.load.users != next.load.users
            || self.load.network != next.load.network
            || self.disruption != next.disruption
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Load {
        Load {
            users: 10,
            connect_rate: 100.0,
            message_interval: Duration::from_secs(1),
            payload_size: 64,
            heartbeat_interval: Duration::from_secs(10),
            room_size: 10,
            network: Network::NONE,
        }
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let patch = LoadPatch {
            users: Some(5000),
            ..Default::default()
        };
        let next = base().apply(&patch).expect("valid patch");
        assert_eq!(next.users, 5000);
        assert_eq!(next.connect_rate, 100.0);
        assert_eq!(next.message_interval, Duration::from_secs(1));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (
                LoadPatch {
                    connect_rate: Some(-1.0),
                    ..Default::default()
                },
                "connect_rate",
            ),
            (
                LoadPatch {
                    connect_rate: Some(f64::NAN),
                    ..Default::default()
                },
                "connect_rate",
            ),
            (
                LoadPatch {
                    connect_rate: Some(1e-300),
                    ..Default::default()
                },
                "connect_rate",
            ),
            (
                LoadPatch {
                    message_interval: Some(Duration::from_micros(10)),
                    ..Default::default()
                },
                "message_interval",
            ),
            (
                LoadPatch {
                    payload_size: Some(MAX_PAYLOAD_SIZE + 1),
                    ..Default::default()
                },
                "payload_size",
            ),
            (
                LoadPatch {
                    users: Some(MAX_USERS + 1),
                    ..Default::default()
                },
                "users",
            ),
        ];
        for (patch, field) in cases {
            let err = base().apply(&patch).expect_err("must be rejected");
            assert_eq!(err.field, field);
        }
    }

    #[test]
    fn caps_are_checked_and_named() {
        let limits = Limits {
            max_users: Some(100),
            max_message_rate: Some(50.0),
            default_reason: None,
        };
        let mut load = base();
        assert!(limits.check(&load).is_ok());
        load.users = 101;
        let err = limits.check(&load).expect_err("over the user cap");
        assert!(err.field == "users" && err.problem.contains("100"), "{err}");
        load.users = 100;
        load.message_interval = Duration::from_millis(500);
        let err = limits
            .check(&load)
            .expect_err("200 msg/s is over the rate cap");
        assert!(
            err.field == "message_interval" && err.problem.contains("50"),
            "{err}"
        );
    }

    #[test]
    fn zero_interval_means_no_messages_and_is_valid() {
        let patch = LoadPatch {
            message_interval: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(base().apply(&patch).is_ok());
    }

    #[test]
    fn users_wake_for_what_they_send_and_whom_they_expect_not_for_the_connect_rate() {
        let now = Desired::new(base());
        let with = |change: fn(&mut Load)| {
            let mut next = base();
            change(&mut next);
            now.concerns_users(&Desired::new(next))
        };
        assert!(with(|l| l.payload_size = 65));
        assert!(with(|l| l.users = 11));
        assert!(with(|l| l.room_size = 3));
        assert!(!with(|l| l.connect_rate = 5.0));
    }

    /// A storm's share is drawn per user from its number and the user's id: about `share`
    /// of the users, other ones in the next storm, each away for less than the window.
    #[test]
    fn a_storm_chooses_about_its_share_and_keeps_within_its_window() {
        let storm = |epoch| Disruption {
            epoch,
            share: 0.3,
            back_within: Duration::from_secs(3),
        };
        let chosen: Vec<u32> = (0..10_000).filter(|&u| storm(1).chooses(u)).collect();
        assert!((2_800..=3_200).contains(&chosen.len()), "{}", chosen.len());
        let again = chosen.iter().filter(|&&u| storm(2).chooses(u)).count();
        assert!(
            (700..=1_100).contains(&again),
            "the next storm draws afresh: {again}"
        );
        assert!(
            chosen
                .iter()
                .all(|&u| storm(1).away_for(u) < Duration::from_secs(3))
        );
        let mean = chosen
            .iter()
            .map(|&u| storm(1).away_for(u).as_secs_f64())
            .sum::<f64>()
            / chosen.len() as f64;
        assert!(
            (1.3..=1.7).contains(&mean),
            "uniform over the window: {mean}"
        );
        assert!(
            !Disruption {
                share: 0.0,
                ..storm(1)
            }
            .chooses(7)
        );
    }
}
