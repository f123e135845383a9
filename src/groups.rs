//! The fleet's groups of users and their live load: each group holds `users` (a count) or a
//! `share` of the fleet's `users`, and sets live fields of its own over the fleet's; the
//! fields it does not set follow the fleet's. A fleet without `groups:` is one group,
//! [`DEFAULT_GROUP`], that sets nothing of its own: today's fleet.
//!
//! [`FleetLoad`] is what the supervisor holds and every change goes through: the fleet's
//! [`Load`] (whose `users` the `share` groups split) and each group's [`GroupLoad`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::load::{Desired, Limits, Load, LoadError, LoadPatch};

/// Most groups a fleet may have: each name is a value of the `group` label.
pub const MAX_GROUPS: usize = 16;
/// Longest group name.
pub const MAX_NAME: usize = 32;
/// The group of a fleet without `groups:` (a label value: [`crate::label`] holds it).
pub use crate::label::DEFAULT_GROUP;

/// Checks that `name` can be a metric label value and a path segment: `[a-z0-9_-]`, 1 to
/// [`MAX_NAME`] characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a group name is 1 to {MAX_NAME} of a-z, 0-9, `_` and `-` (it is a metric label), got {name:?}"
        ))
    }
}

/// One group's part of the live load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupLoad {
    pub name: String,
    /// The fraction of the fleet's `users` this group holds; `None` when it holds a count of
    /// its own (`overrides.users`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// The live fields this group sets itself (never `connect_rate`, which is fleet-wide).
    #[serde(default, skip_serializing_if = "LoadPatch::is_empty")]
    pub overrides: LoadPatch,
    /// Caps of this group's own (its `limits:`), besides the fleet's on every group together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Its rooms come from its scenario's `rooms` table, fixed at start: `room_size` does not
    /// apply to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_rooms: bool,
    /// Its users' sockets go through the shaper (its config gave `network:`): its `network`
    /// can change live. Without it the group's link is `none`, whatever the fleet's says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shaped: bool,
}

/// Why `room_size` cannot change a group of [`GroupLoad::fixed_rooms`].
const FIXED_ROOMS: &str = "this group's rooms come from its scenario's `rooms` table, fixed at start; room_size does not apply";

/// Why `network` cannot change a group that is not [`GroupLoad::shaped`].
const UNSHAPED: &str = "this group's sockets are not shaped (its config has no `network:`, so they cost nothing); give it `network: none` in the config to change its link while it runs";

/// The live load of every group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetLoad {
    /// The fleet's fields: what groups follow, and the `users` that `share` groups split.
    pub fleet: Load,
    pub groups: Vec<GroupLoad>,
}

impl FleetLoad {
    /// A fleet of one group, [`DEFAULT_GROUP`], holding all of `load`.
    pub fn single(load: Load) -> FleetLoad {
        FleetLoad {
            fleet: load,
            groups: vec![GroupLoad {
                name: DEFAULT_GROUP.into(),
                share: Some(1.0),
                overrides: LoadPatch::default(),
                limits: None,
                fixed_rooms: false,
                shaped: false,
            }],
        }
    }

    /// The users of each group: counts as given, shares of the fleet's `users` by the largest
    /// remainder (shares that add up to 1 hold exactly the fleet's `users`).
    pub fn users(&self) -> Vec<u32> {
        let pool = f64::from(self.fleet.users);
        let mut users: Vec<u32> = Vec::with_capacity(self.groups.len());
        let mut remainders = Vec::new();
        for (i, group) in self.groups.iter().enumerate() {
            match group.share {
                Some(share) => {
                    let exact = share * pool;
                    users.push(exact.floor() as u32);
                    remainders.push((exact - exact.floor(), i));
                }
                None => users.push(group.overrides.users.unwrap_or(0)),
            }
        }
        let shared: f64 = self.groups.iter().filter_map(|g| g.share).sum();
        let target = (shared.min(1.0) * pool).round() as u32;
        let given: u32 = remainders.iter().map(|&(_, i)| users[i]).sum();
        remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in remainders
            .iter()
            .take(target.saturating_sub(given) as usize)
        {
            users[i] += 1;
        }
        users
    }

    /// Users the whole fleet holds: every group's.
    pub fn total_users(&self) -> u32 {
        self.users()
            .iter()
            .fold(0u32, |sum, &n| sum.saturating_add(n))
    }

    /// The load of group `index` (its fields over the fleet's, its users).
    pub fn group(&self, index: usize) -> Load {
        self.with_users(index, self.users()[index])
    }

    /// Every group's load, in order (the shares split once for all of them).
    pub fn loads(&self) -> Vec<Load> {
        let users = self.users();
        (0..self.groups.len())
            .map(|i| self.with_users(i, users[i]))
            .collect()
    }

    /// Group `index`'s fields over the fleet's, holding `users` (and no link but the one it
    /// has, when its sockets are not shaped).
    fn with_users(&self, index: usize, users: u32) -> Load {
        let group = &self.groups[index];
        let load = self.fleet.patched(&group.overrides);
        Load {
            users,
            network: if group.shaped {
                load.network
            } else {
                crate::session::settings::Network::NONE
            },
            ..load
        }
    }

    /// The index of the group named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// Messages per second every group together sends.
    pub fn message_rate(&self) -> f64 {
        self.loads().iter().map(Load::message_rate).sum()
    }

    /// The load after `patch` (its fleet fields, then each group's), or the first broken rule
    /// naming the field (`groups.chatters.users`); `self` is never modified. A group given
    /// `users` holds that count from then on, whatever its share was.
    pub fn apply(&self, patch: &LoadPatch) -> Result<FleetLoad, LoadError> {
        if patch.room_size.is_some() && self.groups.iter().all(|g| g.fixed_rooms) {
            return Err(LoadError::new("room_size", FIXED_ROOMS));
        }
        if patch.network.is_some() && !self.groups.iter().any(|g| g.shaped) {
            return Err(LoadError::new("network", UNSHAPED));
        }
        let mut next = FleetLoad {
            fleet: self.fleet.apply(patch)?,
            groups: self.groups.clone(),
        };
        for (name, change) in &patch.groups {
            let at = |field: &str| format!("groups.{name}.{field}");
            let Some(index) = next.index(name) else {
                return Err(LoadError::new(
                    format!("groups.{name}"),
                    format!("no such group; the groups are {}", self.names().join(", ")),
                ));
            };
            if !change.groups.is_empty() {
                return Err(LoadError::new(at("groups"), "groups do not nest"));
            }
            if change.connect_rate.is_some() {
                return Err(LoadError::new(
                    at("connect_rate"),
                    "the connect rate is the fleet's: set it at the top level",
                ));
            }
            let group = &mut next.groups[index];
            if change.room_size.is_some() && group.fixed_rooms {
                return Err(LoadError::new(at("room_size"), FIXED_ROOMS));
            }
            if change.network.is_some() && !group.shaped {
                return Err(LoadError::new(at("network"), UNSHAPED));
            }
            group.overrides = group.overrides.merged(change);
            if change.users.is_some() {
                group.share = None;
            }
        }
        for (index, load) in next.loads().into_iter().enumerate() {
            let name = &next.groups[index].name;
            load.validate()
                .map_err(|err| err.within(&format!("groups.{name}.")))?;
        }
        Ok(next)
    }

    /// Checks the caps: on the one group as [`Limits::check`] says it, or on the fleet's
    /// total users and messages per second.
    pub fn check(&self, limits: &Limits) -> Result<(), LoadError> {
        for (index, group) in self.groups.iter().enumerate() {
            if let Some(own) = &group.limits {
                own.check(&self.group(index))
                    .map_err(|err| err.within(&format!("groups.{}.", group.name)))?;
            }
        }
        if let [_] = self.groups.as_slice() {
            return limits.check(&self.group(0));
        }
        let total = Load {
            users: self.total_users(),
            ..self.fleet.clone()
        };
        limits.check(&Load {
            message_interval: std::time::Duration::ZERO,
            ..total
        })?;
        if let Some(max) = limits.max_message_rate {
            let rate = self.message_rate();
            if rate > max {
                return Err(LoadError::new(
                    "message_interval",
                    format!(
                        "the groups together send {rate:.1} messages/s, over the cap of {max} (limits.max_message_rate)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The group names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// What differs in `next`, for a person: the fleet's fields, then each group's
    /// (`users 10 -> 20; chatters: message_interval 5s -> 1s`), or `no change`.
    pub fn describe_change(&self, next: &FleetLoad) -> String {
        let mut parts = Vec::new();
        let fleet = self.fleet.describe_change(&next.fleet);
        if fleet != crate::load::NO_CHANGE {
            parts.push(fleet);
        }
        if self.groups.len() > 1 {
            for (i, (old, new)) in self.loads().iter().zip(next.loads()).enumerate() {
                let change = old.describe_change(&new);
                if change != crate::load::NO_CHANGE {
                    parts.push(format!("{}: {change}", self.groups[i].name));
                }
            }
        }
        if parts.is_empty() {
            crate::load::NO_CHANGE.into()
        } else {
            parts.join("; ")
        }
    }

    /// The patch that turns this load into `next` (what a reload asks for).
    pub fn patch_to(&self, next: &FleetLoad) -> LoadPatch {
        let mut patch = LoadPatch::between(&self.fleet, &next.fleet);
        let mut groups = BTreeMap::new();
        for (old, new) in self.groups.iter().zip(&next.groups) {
            let mut change = LoadPatch::between(
                &self.fleet.patched(&old.overrides),
                &next.fleet.patched(&new.overrides),
            );
            change.users = (old != new && new.share.is_none())
                .then_some(new.overrides.users)
                .flatten();
            change.connect_rate = None;
            if !change.is_empty() {
                groups.insert(new.name.clone(), change);
            }
        }
        patch.groups = groups;
        patch
    }
}

/// The load as the API shows it: the fleet's fields, and each group's effective load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoadView {
    /// The fleet's fields (its `users` are what `share` groups split).
    #[serde(flatten)]
    pub fleet: Load,
    /// Users of every group together.
    pub users_total: u32,
    pub groups: Vec<GroupView>,
}

/// One group's load, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    /// Its fraction of the fleet's `users`, when it holds a share rather than a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    #[serde(flatten)]
    pub load: Load,
}

impl From<&FleetLoad> for LoadView {
    fn from(load: &FleetLoad) -> LoadView {
        LoadView {
            fleet: load.fleet.clone(),
            users_total: load.total_users(),
            groups: load
                .groups
                .iter()
                .zip(load.loads())
                .map(|(group, effective)| GroupView {
                    name: group.name.clone(),
                    share: group.share,
                    load: effective,
                })
                .collect(),
        }
    }
}

/// Everything the supervisor publishes about the whole fleet (each group's users watch their
/// own part of it: [`FleetDesired::group`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDesired {
    pub load: FleetLoad,
    /// Asked to hold still: no messages, no new connections.
    pub paused: bool,
    /// The generator is overloaded: no new connections until it recovers.
    pub saturated: bool,
    /// The run is ending: no messages, no new connections; connected users settle their books.
    pub draining: bool,
    /// The last sync storm, and the group it struck (every group when `None`).
    pub disruption: Option<(crate::load::Disruption, Option<usize>)>,
}

impl FleetDesired {
    pub fn new(load: FleetLoad) -> FleetDesired {
        FleetDesired {
            load,
            paused: false,
            saturated: false,
            draining: false,
            disruption: None,
        }
    }

    /// What the users of group `index` are told.
    pub fn group(&self, index: usize) -> Desired {
        Desired {
            load: self.load.group(index),
            paused: self.paused,
            saturated: self.saturated,
            draining: self.draining,
            disruption: self
                .disruption
                .filter(|(_, group)| group.is_none_or(|g| g == index))
                .map(|(storm, _)| storm),
        }
    }

    /// Whether users may open connections now.
    pub fn may_connect(&self) -> bool {
        !self.paused && !self.saturated && !self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::settings::Network;
    use std::time::Duration;

    fn fleet(users: u32, groups: &[(&str, Option<f64>, Option<u32>)]) -> FleetLoad {
        FleetLoad {
            fleet: Load {
                users,
                ..crate::config::Config::embedded_default().load()
            },
            groups: groups
                .iter()
                .map(|&(name, share, count)| GroupLoad {
                    name: name.into(),
                    share,
                    overrides: LoadPatch {
                        users: count,
                        ..LoadPatch::default()
                    },
                    limits: None,
                    fixed_rooms: false,
                    shaped: false,
                })
                .collect(),
        }
    }

    #[test]
    fn shares_split_the_fleet_exactly_and_counts_add() {
        let load = fleet(
            10,
            &[
                ("a", Some(1.0 / 3.0), None),
                ("b", Some(1.0 / 3.0), None),
                ("c", Some(1.0 / 3.0), None),
            ],
        );
        assert_eq!(load.users(), [4, 3, 3]);
        assert_eq!(load.total_users(), 10);
        let mixed = fleet(
            1000,
            &[("lurkers", Some(0.8), None), ("bots", None, Some(7))],
        );
        assert_eq!(mixed.users(), [800, 7]);
        assert_eq!(mixed.total_users(), 807);
        assert_eq!(FleetLoad::single(mixed.fleet.clone()).users(), [1000]);
    }

    #[test]
    fn only_a_shaped_group_changes_its_link_live() {
        let mut load = fleet(
            10,
            &[("phones", Some(0.5), None), ("desks", Some(0.5), None)],
        );
        load.groups[0].shaped = true;
        let patch = |body: serde_json::Value| -> LoadPatch {
            serde_json::from_value(body).expect("a patch")
        };
        let slow = load
            .apply(&patch(
                serde_json::json!({"groups": {"phones": {"network": "3g"}}}),
            ))
            .expect("a shaped group's link changes");
        assert_eq!(slow.group(0).network.to_string(), "3g");
        assert_eq!(slow.group(1).network, Network::NONE);
        assert_eq!(
            load.describe_change(&slow),
            "phones: network none -> 3g",
            "the change log names the profile"
        );
        // The fleet's link reaches the shaped groups that follow it, never an unshaped one.
        let everyone = load
            .apply(&patch(serde_json::json!({"network": {"latency": "80ms"}})))
            .expect("some group is shaped");
        assert_eq!(everyone.group(0).network.latency, Duration::from_millis(80));
        assert_eq!(everyone.group(1).network, Network::NONE);
        let refused = load
            .apply(&patch(
                serde_json::json!({"groups": {"desks": {"network": "lte"}}}),
            ))
            .expect_err("an unshaped group's sockets are not wrapped");
        assert_eq!(refused.field, "groups.desks.network");
        assert!(refused.problem.contains("network: none"), "{refused}");
        let broken = load
            .apply(&patch(serde_json::json!({
                "groups": {"phones": {"network": {"latency": "10ms", "jitter": "20ms"}}}
            })))
            .expect_err("jitter above latency");
        assert_eq!(broken.field, "groups.phones.network");
        load.groups[0].shaped = false;
        let none_shaped = load
            .apply(&patch(serde_json::json!({"network": "3g"})))
            .expect_err("no group is shaped");
        assert_eq!(none_shaped.field, "network");
    }

    #[test]
    fn a_group_patch_moves_that_group_alone_and_bad_ones_change_nothing() {
        let load = fleet(100, &[("a", Some(0.5), None), ("b", Some(0.5), None)]);
        let patch: LoadPatch = serde_json::from_value(serde_json::json!({
            "groups": {"b": {"users": 7, "message_interval": "5s"}}
        }))
        .expect("a patch");
        let next = load.apply(&patch).expect("valid");
        assert_eq!(next.users(), [50, 7]);
        assert_eq!(next.group(0), load.group(0));
        assert_eq!(next.group(1).message_interval, Duration::from_secs(5));
        // The fleet's interval moves the groups that follow it, not the one that set its own.
        let faster = next
            .apply(&LoadPatch {
                message_interval: Some(Duration::from_millis(100)),
                ..LoadPatch::default()
            })
            .expect("valid");
        assert_eq!(faster.group(0).message_interval, Duration::from_millis(100));
        assert_eq!(faster.group(1).message_interval, Duration::from_secs(5));
        assert_eq!(
            next.describe_change(&faster),
            "message_interval 1s -> 100ms; a: message_interval 1s -> 100ms"
        );
        for (body, field) in [
            (
                serde_json::json!({"groups": {"c": {"users": 1}}}),
                "groups.c",
            ),
            (
                serde_json::json!({"groups": {"a": {"connect_rate": 5}}}),
                "groups.a.connect_rate",
            ),
            (
                serde_json::json!({"groups": {"a": {"payload_size": 99999999}}}),
                "groups.a.payload_size",
            ),
        ] {
            let patch: LoadPatch = serde_json::from_value(body).expect("a patch");
            assert_eq!(load.apply(&patch).expect_err("refused").field, field);
        }
        assert_eq!(load.patch_to(&next), patch);
    }
}
