//! Command-line interface: subcommands and how their flags combine with a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::config::{Config, ConfigError, validate_target};
use crate::scenario::ScenarioChoice;

#[derive(Debug, Parser)]
#[command(
    name = "wsfleet",
    version,
    about = "Keeps a fleet of simulated WebSocket users on a server and measures what they feel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load daemon (with no config and no --target: against an in-process reference target).
    Run(FleetArgs),
    /// Run the reference WebSocket server.
    Target(TargetArgs),
    /// Validate a config and print the effective one.
    Check(FleetArgs),
}

/// Where the config comes from, and flags that override it.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// YAML config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket URL of the server under test (ws:// or wss://).
    #[arg(long, value_name = "URL")]
    pub target: Option<Url>,
    /// Number of users to keep connected.
    #[arg(long, value_name = "N")]
    pub users: Option<u32>,
    /// Built-in scenario: im (the reference target's protocol), echo, idle.
    #[arg(long, value_name = "NAME")]
    pub scenario: Option<String>,
    /// Address of the control API and /metrics.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Address to serve WebSocket (/ws), /metrics and /healthz on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Require this token in every login (default: any token is accepted).
    #[arg(long, value_name = "TOKEN", env = "WSFLEET_TARGET_TOKEN")]
    pub token: Option<String>,
}

impl FleetArgs {
    /// The config file (or the embedded default) with the flags applied, validated.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::embedded_default(),
        };
        if let Some(target) = &self.target {
            validate_target(target)?;
            config.target = Some(target.clone());
        }
        if let Some(users) = self.users {
            config.users = users;
            config.load().validate()?;
        }
        if let Some(name) = &self.scenario {
            config.scenario =
                ScenarioChoice::from_name(name).map_err(|problem| ConfigError::Invalid {
                    field: "--scenario",
                    problem,
                })?;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        Ok(config)
    }
}
