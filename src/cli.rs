//! Command-line interface: subcommands and how their flags combine with a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::config::{Config, ConfigError, Plan};
use crate::shard::Shard;

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
    Run(RunArgs),
    /// Run the reference IM server.
    Target(TargetArgs),
    /// Validate a config and print the effective one.
    Check(FleetArgs),
    /// Steer a running daemon through its control API.
    Ctl(CtlArgs),
    /// Compare a run's summary (--summary-out JSON) with a baseline's: a side-by-side table and
    /// exit 3 on a regression beyond the allowances.
    Compare(CompareArgs),
    /// Turn a captured session (a browser's HAR export, or JSON lines of {dir, time, data})
    /// into a scenario config, secrets replaced by variables; --check replays it with one user.
    Record(RecordArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// The capture: HAR 1.2 with `_webSocketMessages` (Chromium, Firefox), or JSON lines; or,
    /// with --check, a scenario written before (`.yaml`, its secrets filled) to replay as it is.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the scenario (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The server to aim at instead of the captured one (scheme, host and port; the captured
    /// path and query stay).
    #[arg(long, value_name = "URL")]
    pub target: Option<Url>,
    /// Which WebSocket session of a HAR to read, from 1 in the file's order (a page may open
    /// several; the record's log lists them).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub session: u32,
    /// Binary frames are protobuf, described by this `.proto` file (repeat for several;
    /// imports are looked up beside them); needs --message.
    #[arg(long, value_name = "FILE", requires = "message")]
    pub proto: Vec<PathBuf>,
    /// The protobuf message type of every binary frame (fully qualified: `chat.Envelope`).
    #[arg(long, value_name = "TYPE", requires = "proto")]
    pub message: Option<String>,
    /// Replay the written scenario with one user and report each part as matched or not
    /// (exit 1 if one is not).
    #[arg(long)]
    pub check: bool,
    /// How long --check may take at most.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub check_for: std::time::Duration,
}

impl RecordArgs {
    /// What `wsfleet record` reads of the capture, and where it aims the scenario.
    /// The `.proto` files are written into the scenario as absolute paths, so it loads from
    /// wherever it is written.
    pub fn record_options(&self) -> Result<crate::record::Options, String> {
        let protobuf = match &self.message {
            None => None,
            Some(message) => Some(crate::codec::protobuf::ProtobufSpec {
                files: self
                    .proto
                    .iter()
                    .map(|file| {
                        std::fs::canonicalize(file)
                            .map_err(|err| format!("--proto {}: {err}", file.display()))
                    })
                    .collect::<Result<_, _>>()?,
                include: Vec::new(),
                message: message.clone(),
                by_type: None,
            }),
        };
        Ok(crate::record::Options {
            target: self.target.clone(),
            session: self.session as usize,
            protobuf,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The baseline's summary.
    #[arg(value_name = "BASE.json")]
    pub base: PathBuf,
    /// The run's summary.
    #[arg(value_name = "RUN.json")]
    pub run: PathBuf,
    #[command(flatten)]
    pub limits: Limits,
}

/// The regressions a comparison allows.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// How much worse one figure may get, over its default (a latency's p50/p90/p99: 10% or
    /// 5 ms, whichever is more; a rate: 10% or 0.001): `p99_delivery=10%`, `p99_rtt=20ms`,
    /// `chat/error_rate=0.001`. Repeat for several.
    #[arg(long, value_name = "NAME=LIMIT")]
    pub max_regression: Vec<crate::compare::MaxRegression>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Stop by itself after this long (e.g. 10m), print a summary, and exit non-zero (3) if an
    /// SLA in the config was breached.
    #[arg(long, value_name = "DURATION", value_parser = parse_run_duration)]
    pub duration: Option<std::time::Duration>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_out: Option<PathBuf>,
    /// Search the most load the server holds within the SLA (the config's `capacity:` and
    /// `sla:`), then stop: the answer is in the summary, the exit code 0 (found), 3 (even the
    /// first step broke the SLA) or 1 (the generator was the limit, or cancelled).
    #[arg(long)]
    pub find_capacity: bool,
    /// Also write the run report, one self-contained HTML file (verdict, SLOs, summary, charts
    /// of the whole run, profile, config), to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Also write the verdict as JUnit XML to this file: one test case per SLO (per group),
    /// a breach a failure with observed against threshold.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Compare the run with this earlier run's summary (--summary-out JSON) at its end: the
    /// table is printed and in the summary and report, and a regression exits 3.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Keep this run's report and summary in this directory (made if missing) under a stable
    /// name (start time and config hash), and list every run kept there, with its verdict, in
    /// its index.html.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    #[command(flatten)]
    pub limits: Limits,
}

/// `--duration`: a human duration of at most 30 days.
fn parse_run_duration(text: &str) -> Result<std::time::Duration, String> {
    parse_span("--duration", text)
}

/// `--history-age`: likewise (0s would keep nothing).
fn parse_history_age(text: &str) -> Result<std::time::Duration, String> {
    parse_span("--history-age", text)
}

/// `--idle-timeout`: likewise (0s would close every client at once).
fn parse_idle_timeout(text: &str) -> Result<std::time::Duration, String> {
    parse_span("--idle-timeout", text)
}

fn parse_span(flag: &str, text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    crate::load::check_duration(
        flag,
        duration,
        std::time::Duration::from_millis(1),
        crate::load::MAX_SPAN,
        None,
    )
    .map_err(|err| err.problem)?;
    Ok(duration)
}

#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Control API of the daemon.
    #[arg(
        long,
        value_name = "URL",
        env = "WSFLEET_ENDPOINT",
        default_value = "http://127.0.0.1:9750"
    )]
    pub endpoint: Url,
    /// Steer every instance of a sharded fleet at once: ADDR,ADDR,... or a DNS name (a
    /// headless Service) that resolves to every pod, with the port of --endpoint unless given.
    /// Load values stay fleet-wide; each instance applies its share.
    #[arg(long, value_name = "ADDRS|DNS-NAME", env = "WSFLEET_FLEET")]
    pub fleet: Option<String>,
    /// Bearer token, if the daemon requires one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WSFLEET_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a summary for people.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CtlAction {
    /// Desired against reached users, totals, latency.
    Status,
    /// Change the load: `ctl set users=5000 connect_rate=200 chatters.message_interval=1s`.
    Set {
        /// FIELD=VALUE pairs (fields of PATCH /api/v1/load); GROUP.FIELD=VALUE changes one
        /// group.
        #[arg(required = true, value_name = "FIELD=VALUE")]
        changes: Vec<String>,
    },
    /// Stop sending and connecting; keep connections.
    Pause,
    /// Undo pause.
    Resume,
    /// Follow a profile from a YAML or JSON file (`stages:` or `ramp:`).
    Profile {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Re-read the daemon's config file.
    Reload,
}

/// Where the config comes from, and flags that override it.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// YAML config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// URL of the server under test: WebSocket (ws://, wss://) or a plain stream (tcp://,
    /// tls://).
    #[arg(long, value_name = "URL")]
    pub target: Option<Url>,
    /// Number of users to keep connected.
    #[arg(long, value_name = "N")]
    pub users: Option<u32>,
    /// Built-in scenario (im is the reference target's protocol).
    #[arg(long, value_name = "NAME", value_parser = builtin_names())]
    pub scenario: Option<String>,
    /// Address of the control API and /metrics.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Local address to connect from (repeat for several, used round-robin); replaces
    /// `source_addresses` of the config.
    #[arg(long = "source-address", value_name = "IP")]
    pub source_addresses: Vec<std::net::IpAddr>,
    /// This instance's shard of the fleet, INDEX/COUNT (e.g. 3/10); the load stays fleet-wide.
    #[arg(long, value_name = "I/N", env = "WSFLEET_SHARD", value_parser = Shard::parse)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Address to serve WebSocket (/ws), /metrics and /healthz on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Require this token in every login (default: any token is accepted).
    #[arg(long, value_name = "TOKEN", env = "WSFLEET_TARGET_TOKEN")]
    pub token: Option<String>,
    /// Require this bearer token on the fault-injection admin API (`/admin/...`); without
    /// it, anyone who reaches the port can stall or close every connection.
    #[arg(long, value_name = "TOKEN", env = "WSFLEET_TARGET_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Serve wss:// with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CA in this PEM file (mutual TLS; with
    /// --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Also serve the IM protocol over plain TCP here, each frame with a 4-byte big-endian
    /// length prefix (aim a `tcp://` target at it).
    #[arg(long, value_name = "ADDR")]
    pub tcp_listen: Option<SocketAddr>,
    /// Close a client silent (no frame, not even a ping) for this long, as servers do with
    /// clients that vanished (`--idle-timeout 30s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_idle_timeout)]
    pub idle_timeout: Option<std::time::Duration>,
    /// Keep each room's last N messages by cursor, so a client coming back can sync what it
    /// missed (`{"type":"sync","after":CURSOR}`); deliveries then carry their `cursor`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub history: Option<u32>,
    /// Hold connections with the least memory (capacity rehearsals): WebSockets are accepted
    /// straight from TCP at /ws with small buffers, and /metrics, /healthz and the admin API
    /// move to --admin-listen. Not with TLS or --tcp-listen.
    #[arg(long, conflicts_with_all = ["tls_cert", "tcp_listen"])]
    pub lean: bool,
    /// Where a --lean target serves /metrics, /healthz and the admin API.
    #[arg(long, value_name = "ADDR", requires = "lean")]
    pub admin_listen: Option<SocketAddr>,
    /// How long a room's history keeps a message (with --history).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_history_age, requires = "history")]
    pub history_age: std::time::Duration,
}

impl FleetArgs {
    /// The config file (or the embedded default) with the flags set over its fields, then
    /// validated once, so a flag is held to every rule a file is (caps included).
    pub fn resolve(&self) -> Result<Plan, ConfigError> {
        use serde_norway::Value;
        let mut overrides = serde_norway::Mapping::new();
        let mut set = |field: &str, value: Value| {
            overrides.insert(Value::String(field.into()), value);
        };
        if let Some(target) = &self.target {
            set("target", Value::String(target.to_string()));
        }
        if let Some(users) = self.users {
            set("users", Value::Number(users.into()));
        }
        if let Some(name) = &self.scenario {
            set("scenario", Value::String(name.clone()));
        }
        if let Some(listen) = self.listen {
            set("listen", Value::String(listen.to_string()));
        }
        if !self.source_addresses.is_empty() {
            let addresses = self
                .source_addresses
                .iter()
                .map(|ip| Value::String(ip.to_string()))
                .collect();
            set("source_addresses", Value::Sequence(addresses));
        }
        if let Some(shard) = self.shard {
            let mut spec = serde_norway::Mapping::new();
            spec.insert("index".into(), Value::Number(shard.index.into()));
            spec.insert("count".into(), Value::Number(shard.count.into()));
            set("shard", Value::Mapping(spec));
        }
        Config::read(self.config.as_deref(), overrides)
    }
}

/// `--scenario`'s values: every built-in, from the one table of them.
fn builtin_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        crate::scenario::Builtin::ALL.iter().map(|b| b.as_str()),
    )
}
