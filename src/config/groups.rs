//! `groups:` — kinds of users in one fleet. Each group is its own config: the top level with
//! the group's fields set over it (mappings merged key by key, anything else replaced), read
//! and checked by the same rules, so a group can have its own target, scenario, codec, timing
//! and SLA. Its users are a count (`users`) or a `share` of the fleet's `users`.

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use super::{Config, ConfigError};
use crate::groups::{DEFAULT_GROUP, FleetLoad, GroupLoad, MAX_GROUPS, check_name};
use crate::load::LoadPatch;

/// The fields a group may set; the rest are the fleet's (one API, one listener, one shard).
pub const GROUP_FIELDS: &[&str] = &[
    "target",
    "scenario",
    "schedule",
    "message_interval",
    "payload_size",
    "heartbeat",
    "lifetime",
    "arrivals",
    "reconnect",
    "resend_unacked",
    "compression",
    "offline",
    "network",
    "ack_timeout",
    "loss_grace",
    "connect_timeout",
    "max_message_size",
    "sla",
    "tls",
    "limits",
];

/// One entry of `groups:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The group's name, a value of the `group` metric label: `[a-z0-9_-]`, at most 32.
    pub name: String,
    /// Users this group holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u32>,
    /// The fraction of the fleet's `users` this group holds: `80%` or `0.8`.
    #[serde(
        default,
        with = "crate::sla::ratio",
        skip_serializing_if = "Option::is_none"
    )]
    pub share: Option<f64>,
    /// The group's own fields ([`GROUP_FIELDS`]), set over the fleet's.
    #[serde(flatten)]
    pub fields: Mapping,
}

/// What one group runs: its config (the fleet's with the group's fields over it) and what
/// that compiles to.
pub struct GroupPlan {
    pub name: String,
    pub config: Config,
    pub scenario: crate::scenario::Scenario,
    pub tls: crate::session::tls::ClientTls,
    pub session: crate::session::Settings,
}

impl Config {
    /// Each group's config, compiled: the `groups:`, or the one group [`DEFAULT_GROUP`] of
    /// this config itself. Every group is read and checked as a config of its own; an error
    /// names the group.
    pub(super) fn group_plans(&self) -> Result<Vec<GroupPlan>, ConfigError> {
        if self.groups.is_empty() {
            return Ok(vec![GroupPlan {
                name: DEFAULT_GROUP.into(),
                scenario: self.compile_scenario()?,
                tls: self.client_tls()?,
                session: self.session(),
                config: self.clone(),
            }]);
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(ConfigError::Invalid {
                field: "groups",
                problem: format!(
                    "at most {MAX_GROUPS} groups (each is a metric label value), got {}",
                    self.groups.len()
                ),
            });
        }
        let fleet = match serde_norway::to_value(Config {
            groups: Vec::new(),
            ..self.clone()
        }) {
            Ok(Value::Mapping(fields)) => fields,
            _ => Mapping::new(),
        };
        let mut plans: Vec<GroupPlan> = Vec::with_capacity(self.groups.len());
        for (i, spec) in self.groups.iter().enumerate() {
            let in_group = |err: ConfigError| ConfigError::Group {
                group: format!("groups[{i}] ({})", spec.name),
                source: Box::new(err),
            };
            let listed = |field: &str, problem: String| ConfigError::Listed {
                field: format!("groups[{i}].{field}"),
                problem,
            };
            check_name(&spec.name).map_err(|problem| listed("name", problem))?;
            if plans.iter().any(|p| p.name == spec.name) {
                return Err(listed("name", format!("`{}` is taken", spec.name)));
            }
            if spec.users.is_some() == spec.share.is_some() {
                return Err(listed(
                    "users",
                    "give a group `users` (a count) or `share` (of the fleet's users), not both or neither".into(),
                ));
            }
            for key in spec.fields.keys() {
                let key = key.as_str().unwrap_or("?");
                if !GROUP_FIELDS.contains(&key) {
                    return Err(listed(
                        key,
                        format!(
                            "not a field a group sets; a group may set {}",
                            GROUP_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            let mut own = Value::Mapping(fleet.clone());
            // A group's own schedule brings its own mean gap, unless it sets the interval too.
            if spec.fields.contains_key("schedule")
                && !spec.fields.contains_key("message_interval")
                && let Value::Mapping(fields) = &mut own
            {
                fields.remove("message_interval");
            }
            merge(&mut own, Value::Mapping(spec.fields.clone()));
            let plan = Config::from_raw(own, &self.base_dir).map_err(in_group)?;
            let group = plan.groups.into_iter().next().expect("one group");
            plans.push(GroupPlan {
                name: spec.name.clone(),
                ..group
            });
        }
        Ok(plans)
    }

    /// The live load of the groups `plans` describe (this config's [`Config::group_plans`]).
    pub(super) fn fleet_load(&self, plans: &[GroupPlan]) -> FleetLoad {
        if self.groups.is_empty() {
            let mut single = FleetLoad::single(self.load());
            single.groups[0].fixed_rooms = plans[0].scenario.rooms.is_table();
            single.groups[0].shaped = plans[0].session.shaped;
            return single;
        }
        let fleet = self.load();
        let groups = self
            .groups
            .iter()
            .zip(plans)
            .map(|(spec, plan)| {
                let own = plan.config.load();
                let set = |key: &str| spec.fields.contains_key(key);
                GroupLoad {
                    name: spec.name.clone(),
                    share: spec.share,
                    // Only caps the group sets itself: the fleet's bound every group together.
                    limits: set("limits").then(|| plan.config.limits.clone()),
                    fixed_rooms: plan.scenario.rooms.is_table(),
                    shaped: plan.session.shaped,
                    overrides: LoadPatch {
                        users: spec.users,
                        // A schedule with times of its own brings its own mean gap.
                        message_interval: (set("message_interval")
                            || plan.config.schedule.gaps.mean().is_some())
                        .then_some(own.message_interval),
                        payload_size: set("payload_size").then_some(own.payload_size),
                        heartbeat_interval: set("heartbeat").then_some(own.heartbeat_interval),
                        room_size: set("scenario").then_some(own.room_size),
                        network: set("network").then_some(own.network),
                        ..LoadPatch::default()
                    },
                }
            })
            .collect();
        FleetLoad { fleet, groups }
    }
}

/// Sets `over` over `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn refused(yaml: &str) -> String {
        Config::read_text(yaml).err().expect("refused").to_string()
    }

    #[test]
    fn a_group_is_the_fleet_with_its_own_fields_over_it() {
        let plan = Config::read_text(
            "users: 100\nheartbeat: {interval: 30s, timeout: 3s}\nmessage_interval: 2s\ngroups:\n  - {name: lurkers, share: 80%, message_interval: 0s}\n  - {name: bots, users: 5, heartbeat: {interval: 5s}, scenario: echo}\n",
        )
        .expect("valid");
        let names: Vec<_> = plan.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["lurkers", "bots"]);
        let bots = &plan.groups[1].config;
        assert_eq!(bots.heartbeat.interval, Duration::from_secs(5));
        assert_eq!(bots.heartbeat.timeout, Duration::from_secs(3), "merged");
        assert_eq!(bots.message_interval, Duration::from_secs(2), "the fleet's");
        assert_eq!(plan.load.users(), [80, 5]);
        assert_eq!(plan.load.group(0).message_interval, Duration::ZERO);
        assert_eq!(
            plan.load.group(1).heartbeat_interval,
            Duration::from_secs(5)
        );
        assert!(plan.load.groups[1].overrides.message_interval.is_none());
    }

    #[test]
    fn group_errors_name_the_group_and_field() {
        for (yaml, needle) in [
            ("groups: [{name: Bad, users: 1}]", "groups[0].name"),
            (
                "groups: [{name: a, users: 1}, {name: a, users: 2}]",
                "`a` is taken",
            ),
            ("groups: [{name: a}]", "groups[0].users"),
            ("groups: [{name: a, users: 1, share: 10%}]", "not both"),
            (
                "groups: [{name: a, users: 1, listen: 1.2.3.4:5}]",
                "groups[0].listen",
            ),
            (
                "groups: [{name: a, users: 1, message_interval: 2h}]",
                "groups[0] (a): config field `message_interval`",
            ),
            ("groups: [{name: a, share: 150%}]", "groups[0].share"),
            (
                "groups: [{name: a, users: 1, scenario: chat}]",
                "unknown scenario `chat`",
            ),
        ] {
            let err = refused(yaml);
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        let many: Vec<String> = (0..17)
            .map(|i| format!("{{name: g{i}, users: 1}}"))
            .collect();
        assert!(refused(&format!("groups: [{}]", many.join(", "))).contains("at most 16"));
    }

    #[test]
    fn a_group_with_its_own_schedule_has_its_own_mean_gap() {
        let plan = Config::read_text(
            "message_interval: 5s\ngroups:\n  - {name: people, users: 10, schedule: {uniform: {min: 1s, max: 3s}}}\n  - {name: bots, users: 1}\n",
        )
        .expect("valid");
        assert_eq!(plan.load.group(0).message_interval, Duration::from_secs(2));
        assert_eq!(plan.load.group(1).message_interval, Duration::from_secs(5));
    }

    #[test]
    fn a_group_s_own_caps_hold_beside_the_fleet_s() {
        let err = refused(
            "groups: [{name: bots, users: 50, limits: {max_users: 10}}, {name: b, users: 1}]",
        );
        assert!(
            err.contains("groups.bots.users") && err.contains("10"),
            "{err}"
        );
        let err =
            refused("limits: {max_users: 10}\ngroups: [{name: a, users: 6}, {name: b, users: 6}]");
        assert!(err.contains("12 exceeds the cap of 10"), "{err}");
        let plan = Config::read_text(
            "groups: [{name: bots, users: 5, limits: {max_users: 10}}, {name: b, users: 1}]",
        )
        .expect("valid");
        let over: LoadPatch =
            serde_json::from_value(serde_json::json!({"groups": {"bots": {"users": 11}}}))
                .expect("a patch");
        let next = plan.load.apply(&over).expect("within the rules");
        let err = next
            .check(&plan.config.limits)
            .expect_err("over the group's cap");
        assert_eq!(err.field, "groups.bots.users");
    }

    #[test]
    fn without_groups_the_fleet_is_one_default_group() {
        let plan = Config::read_text("users: 7").expect("valid");
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].name, DEFAULT_GROUP);
        assert_eq!(plan.load, FleetLoad::single(plan.config.load()));
    }
}
