//! A valid config compiled into what the daemon runs, in one place: each group's scenario,
//! TLS client and users' settings, the live load, this instance's shard and the API token.

use super::groups::GroupPlan;
use super::{Config, ConfigError};
use crate::groups::FleetLoad;
use crate::scenario::{Scenario, ScenarioError};
use crate::session::tls::ClientTls;
use crate::shard::Shard;
use crate::sla::Slas;

/// A valid config compiled once ([`Config::plan`]): what [`crate::daemon::Daemon`] runs.
pub struct Plan {
    pub config: Config,
    /// Every group, in the config's order (one, `default`, without `groups:`).
    pub groups: Vec<GroupPlan>,
    /// The live load the fleet starts with.
    pub load: FleetLoad,
    pub shard: Shard,
    pub api_token: Option<String>,
}

impl Plan {
    /// Each group's users, rooms and pace, for a person (`wsfleet check` prints it as YAML
    /// comments after the effective config).
    pub fn describe_groups(&self) -> String {
        let mut out = String::from(
            "# groups: users, rooms, the sizes of each user's rooms, messages per second\n",
        );
        for (plan, load) in self.groups.iter().zip(self.load.loads()) {
            let schedule = &plan.config.schedule;
            let topology = plan.scenario.topology(load.room_size);
            let rooms = topology.rooms(load.users);
            let bursting = schedule.bursts.map_or(1.0, |b| {
                let cycle = (b.on + b.off).as_secs_f64();
                if cycle > 0.0 {
                    b.on.as_secs_f64() / cycle
                } else {
                    1.0
                }
            });
            let rate = load.message_rate() * schedule.speaking() * bursting;
            let arrivals = plan.config.arrivals.map_or(String::new(), |a| {
                format!(
                    ", arriving {}/s for {} on average (up to {} at once)",
                    a.rate,
                    humantime::format_duration(a.stay.mean),
                    load.users
                )
            });
            out.push_str(&format!(
                "#   {:<16} {:>8} users  {:>7} rooms  each user in {:<12}  {:>9.1} msg/s{arrivals}\n",
                plan.name,
                load.users,
                rooms,
                topology.describe(),
                rate
            ));
        }
        out
    }

    /// The SLAs this plan is judged by: the fleet's, and each group's when it has several.
    pub fn slas(&self) -> Slas {
        Slas {
            fleet: self.config.sla.clone(),
            groups: if self.groups.len() > 1 {
                self.groups
                    .iter()
                    .map(|g| (g.name.clone(), g.config.sla.clone()))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

impl Config {
    /// This instance's shard: `shard.index`, else `WSFLEET_SHARD_INDEX`, else the ordinal of
    /// the pod name in `HOSTNAME` (a StatefulSet's `wsfleet-3`); index 0 of 1 when unsharded.
    pub fn shard(&self) -> Result<Shard, ConfigError> {
        let invalid = |problem: String| ConfigError::Invalid {
            field: "shard",
            problem,
        };
        let count = self.shard.count;
        let index = match self.shard.index {
            Some(index) => index,
            None if count == 1 => 0,
            None => {
                let from_env = std::env::var("WSFLEET_SHARD_INDEX").ok();
                let from_pod = std::env::var("HOSTNAME")
                    .ok()
                    .and_then(|name| Shard::ordinal_of(&name));
                match (from_env, from_pod) {
                    (Some(text), _) => text.trim().parse().map_err(|_| {
                        invalid(format!(
                            "WSFLEET_SHARD_INDEX must be a number, got `{text}`"
                        ))
                    })?,
                    (None, Some(ordinal)) => ordinal,
                    (None, None) => {
                        return Err(invalid(format!(
                            "count is {count} but no index: set shard.index, --shard I/{count}, WSFLEET_SHARD_INDEX, or run as a StatefulSet pod (HOSTNAME wsfleet-N)"
                        )));
                    }
                }
            }
        };
        Shard::new(index, count).map_err(invalid)
    }

    /// This config compiled into what the daemon runs: the one place the scenario, the TLS
    /// client, the shard and the token are derived (validation builds it too, so whatever a
    /// valid config names can be built).
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        let groups = self.group_plans()?;
        Ok(Plan {
            load: self.fleet_load(&groups),
            groups,
            shard: self.shard()?,
            api_token: self.api_token()?,
            config: self.clone(),
        })
    }

    /// The client side of TLS from `tls:`; the error names the field.
    pub fn client_tls(&self) -> Result<ClientTls, ConfigError> {
        crate::session::tls::client(&self.tls, &self.base_dir)
            .map_err(|(field, problem)| ConfigError::Invalid { field, problem })
    }

    /// The API bearer token: from `api.token_file`, else `WSFLEET_API_TOKEN`, else none.
    pub fn api_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.api.token_file {
            let path = self.base_dir.join(path);
            let token =
                crate::files::read_text(&path, crate::files::MAX_CONFIG_BYTES).map_err(|err| {
                    ConfigError::Invalid {
                        field: "api.token_file",
                        problem: format!("cannot read `{}`: {err}", path.display()),
                    }
                })?;
            let token = token.trim();
            if token.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "api.token_file",
                    problem: format!("`{}` is empty", path.display()),
                });
            }
            return Ok(Some(token.to_string()));
        }
        Ok(std::env::var("WSFLEET_API_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// The scenario, compiled.
    pub fn compile_scenario(&self) -> Result<Scenario, ScenarioError> {
        Scenario::compile(&self.scenario.spec(), &self.base_dir)
    }
}
