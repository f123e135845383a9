//! The YAML configuration: the schema (this module), gathered from the section types each
//! component owns (`session::settings`, `health::HealthConfig`, `capacity::CapacitySpec`,
//! `sla::Sla`, `load::Limits`); reading, flags and validation ([`file`]); and the [`Plan`]
//! a valid config compiles into ([`plan`]).
//!
//! Parsing goes through `serde_path_to_error`, so every error names the field it is about, and
//! [`Config::parse`] is the only way to get a [`Config`]: a value of it has passed every rule.

mod error;
mod file;
mod groups;
mod plan;

pub use error::ConfigError;
pub use file::validate_target;
pub use groups::{GroupPlan, GroupSpec};
pub use plan::Plan;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::load::{Limits, Load};
use crate::scenario::ScenarioChoice;
use crate::session::deflate::Compression;
use crate::session::settings::Network;
use crate::session::{Heartbeat, Lifetime, Offline, Reconnect, Schedule, Settings, TlsConfig};
use crate::sla::Sla;

/// Most file descriptors `self_health.min_fds_available` may ask to keep free.
const MAX_FDS_SETTING: u64 = 1 << 30;

/// Where the control API listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9750";

/// The daemon's configuration, as read from YAML and completed with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// URL of the server under test: WebSocket (ws://, wss://) or a plain stream (tcp://,
    /// tls://, cut into frames by the scenario's `framing`). Without one, `wsfleet run`
    /// starts the reference target in-process and points the fleet at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Url>,
    /// Address of the control API and `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_users")]
    pub users: u32,
    #[serde(default = "default_connect_rate")]
    pub connect_rate: f64,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_message_interval", with = "humantime_serde")]
    pub message_interval: Duration,
    #[serde(default = "default_payload_size")]
    pub payload_size: usize,
    /// What users say: a built-in (`im`, `echo`, `idle`) or a description of a protocol.
    #[serde(default)]
    pub scenario: ScenarioChoice,
    /// `fixed`: every user sends exactly every `message_interval`; `poisson`: exponentially
    /// distributed gaps with that mean (an open model either way).
    #[serde(default)]
    pub schedule: Schedule,
    /// A message without its acknowledgement after this long counts as a timeout.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// A missing room delivery counts as lost once a later one from the same sender arrived
    /// and this long has passed (or the receiving session ended).
    #[serde(default = "default_loss_grace", with = "humantime_serde")]
    pub loss_grace: Duration,
    /// A capacity search for `wsfleet run --find-capacity` (see [`crate::capacity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::capacity::CapacitySpec>,
    /// After a reconnect, send again (same id, same sequence) the messages the last connection
    /// left unacknowledged, as IM clients do; servers should deduplicate them, receivers count
    /// the duplicates they fail to remove. Counted in `wsfleet_messages_resent_total`.
    #[serde(default)]
    pub resend_unacked: bool,
    /// Churn: each connection lives a random time in [min, max], then closes and reconnects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,
    /// Users going away and coming back: `{every: 10m, for: {exponential: 30s}, how: close |
    /// vanish | silent}` — connected for a time drawn from `every`, away for one drawn from `for`,
    /// reported as `offline`, not as failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<Offline>,
    /// The link the users sit behind: `{latency, jitter, down, up, stall, handover}` or a
    /// preset (`3g`, `lte`, `none`, ...); see README "Weak networks". Given (`none` too), the
    /// users' sockets are shaped and the profile is live (`PATCH`, profile stages); left out,
    /// sockets stay unwrapped and cost nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Open arrivals: `{rate, stay}` — users arrive at `rate` per second and stay a time
    /// drawn from `stay`; `users` caps how many are there at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<crate::session::settings::Arrivals>,
    /// Window of the exact (HdrHistogram) quantiles in the status API.
    #[serde(default = "default_status_window", with = "humantime_serde")]
    pub status_window: Duration,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(default)]
    pub reconnect: Reconnect,
    /// How long shutdown waits for sessions to close cleanly before it gives up on them.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// At the end of a run (`--duration`, or a signal with `--summary-out`), how long the drain
    /// may wait for outstanding acks and deliveries before the verdict. Default:
    /// max(ack_timeout, loss_grace) + 1s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_timeout: Option<Duration>,
    /// The longest message (WebSocket message, or frame of a plain stream) a user accepts, in
    /// bytes; a longer one ends the connection as `protocol`. Bounds memory: users × this.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// How often a one-line progress report is logged; 0s turns it off.
    #[serde(default = "default_progress_interval", with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Hard caps on users and message rate that no API call, profile or reload can exceed.
    #[serde(default)]
    pub limits: Limits,
    /// Control API protection.
    #[serde(default)]
    pub api: ApiConfig,
    /// SLA thresholds: `wsfleet run --duration` exits non-zero when one is breached, and they
    /// are exported as `wsfleet_sla_threshold{slo}` for alert rules and dashboards.
    #[serde(default)]
    pub sla: Sla,
    /// TLS for `wss://` and `tls://` targets.
    #[serde(default, skip_serializing_if = "TlsConfig::is_default")]
    pub tls: TlsConfig,
    /// WebSocket compression users offer in their upgrade: `deflate` (permessage-deflate as
    /// a browser offers it) or `{deflate: {...}}` (see [`crate::session::deflate`]). Off by
    /// default.
    #[serde(
        default,
        deserialize_with = "crate::codec::named::some",
        skip_serializing_if = "Option::is_none"
    )]
    pub compression: Option<Compression>,
    /// Threads running users (each a single-threaded runtime); default: one per core but one
    /// (at least one), see [`crate::runtimes::default_threads`]. Fewer
    /// threads batch more socket events per wake-up: on a machine shared with the server under
    /// test, 1 thread spent ~1.4 CPU-s per 100k echoed messages where 2 spent ~2.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Local addresses to connect from, round-robin (e.g. 127.0.0.2, 127.0.0.3 on loopback):
    /// each gives another ~28k ephemeral ports towards one target address and port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_addresses: Vec<std::net::IpAddr>,
    /// This instance's part of a sharded fleet: `{index, count}`; with only `count`, the index
    /// comes from `WSFLEET_SHARD_INDEX` or the ordinal of a StatefulSet pod name (`HOSTNAME`
    /// `wsfleet-3` is index 3). The load stays fleet-wide; each shard runs its share.
    #[serde(default, skip_serializing_if = "ShardSpec::is_single")]
    pub shard: ShardSpec,
    /// When the generator counts itself as saturated (and stops adding users).
    #[serde(default)]
    pub self_health: crate::health::HealthConfig,
    /// Kinds of users, each its own part of the fleet: a name, `users` or a `share` of the
    /// fleet's `users`, and fields of its own over the ones above (target, scenario, timing,
    /// SLA, ...). Without it the fleet is one group, `default`, of the fields above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSpec>,
    /// Where relative paths in the config (credentials) are resolved from.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was read from, if any (what a reload re-reads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `shard:` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Default for ShardSpec {
    fn default() -> Self {
        ShardSpec {
            index: None,
            count: 1,
        }
    }
}

impl ShardSpec {
    fn is_single(&self) -> bool {
        self == &ShardSpec::default()
    }
}

/// Control API settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// File holding a bearer token; with one (here or in `WSFLEET_API_TOKEN`), every
    /// `/api` and `/v1` call needs `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Host names the API answers to besides IP addresses and `localhost` (`*`: any), e.g.
    /// the name of a Service or an ingress; other names are refused, so a web page cannot
    /// reach the API through a DNS name it controls. `/metrics` and `/healthz` answer any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://dash.example`) whose web pages may change the load; by default only
    /// the daemon's own page may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("constant address parses")
}
fn default_users() -> u32 {
    10
}
fn default_connect_rate() -> f64 {
    100.0
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_message_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_payload_size() -> usize {
    64
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_loss_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_status_window() -> Duration {
    crate::metrics::WINDOW
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_message_size() -> usize {
    256 * 1024
}

/// Bounds of `max_message_size`.
pub const MESSAGE_SIZE_BOUNDS: std::ops::RangeInclusive<usize> =
    1024..=crate::codec::framing::MAX_FRAME;

fn default_progress_interval() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// How long the end-of-run drain may take: `drain_timeout`, or by default one ack timeout
    /// or loss grace (whichever is longer) and a second.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
            .unwrap_or_else(|| self.ack_timeout.max(self.loss_grace) + Duration::from_secs(1))
    }

    /// The live-adjustable part of this configuration.
    pub fn load(&self) -> Load {
        Load {
            users: self.users,
            connect_rate: self.connect_rate,
            message_interval: self.message_interval,
            payload_size: self.payload_size,
            heartbeat_interval: self.heartbeat.interval,
            room_size: self.scenario.spec().room_size,
            network: self.network.unwrap_or(Network::NONE),
        }
    }

    /// The top-level fields of `next` that differ from this config and only take effect on
    /// restart: everything but the live part of [`Config::load`] and the SLA.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<String> {
        let view = |config: &Config| {
            let mut fields = match serde_json::to_value(config) {
                Ok(serde_json::Value::Object(fields)) => fields,
                _ => serde_json::Map::new(),
            };
            // The live fields the file has at its top level, and the SLA; the two nested
            // ones (heartbeat.interval, scenario.room_size) are zeroed below.
            for live in Load::FIELDS.iter().chain(&["sla"]) {
                fields.remove(*live);
            }
            let mut scenario = config.scenario.spec();
            scenario.room_size = 0;
            let heartbeat = Heartbeat {
                interval: Duration::ZERO,
                ..config.heartbeat.clone()
            };
            for (name, value) in [
                ("scenario", serde_json::to_value(scenario)),
                ("heartbeat", serde_json::to_value(heartbeat)),
            ] {
                fields.insert(name.into(), value.unwrap_or_default());
            }
            fields
        };
        let (old, new) = (view(self), view(next));
        let mut changed: Vec<String> = old
            .keys()
            .chain(new.keys())
            .filter(|key| old.get(*key) != new.get(*key))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }

    /// What every user of the fleet is told: the per-user settings, owned by [`crate::session`].
    pub fn session(&self) -> Settings {
        Settings {
            connect_timeout: self.connect_timeout,
            heartbeat: self.heartbeat.clone(),
            reconnect: self.reconnect.clone(),
            schedule: self.schedule,
            ack_timeout: self.ack_timeout,
            loss_grace: self.loss_grace,
            lifetime: self.lifetime.clone(),
            arrivals: self.arrivals,
            max_message_size: self.max_message_size,
            resend_unacked: self.resend_unacked,
            source_addresses: self.source_addresses.clone(),
            offline: self.offline,
            shaped: self.network.is_some(),
            compression: self.compression.as_ref().map(|c| *c.deflate()),
        }
    }

    /// The effective configuration as YAML, as `wsfleet check` prints it.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a config always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// A config key (or a nested path of the schema) and a value of any shape.
        fn entry() -> impl Strategy<Value = String> {
            let key = prop::sample::select(vec![
                "users",
                "connect_rate",
                "message_interval",
                "payload_size",
                "ack_timeout",
                "loss_grace",
                "max_message_size",
                "threads",
                "target",
                "scenario",
                "heartbeat",
                "reconnect",
                "lifetime",
                "limits",
                "sla",
                "tls",
                "shard",
                "self_health",
                "resend_unacked",
                "source_addresses",
                "schedule",
                "drain_timeout",
                "api",
            ]);
            let value = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                "[a-z0-9:/._%-]{0,12}",
                Just("{interval: 0s, timeout: 99999999h}".to_string()),
                Just("{extends: mqtt, codec: {mqtt: {version: 7}}}".to_string()),
                Just("{framing: {length_prefixed: {bytes: varint}}, codec: text}".to_string()),
                Just("tcp://127.0.0.1:1".to_string()),
                Just("[1, {a: b}, ~]".to_string()),
                Just("{min: 5m, max: 1s}".to_string()),
            ];
            (key, value).prop_map(|(k, v)| format!("{k}: {v}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            /// Whatever the YAML, parsing returns a config or an error naming what is wrong;
            /// it never panics.
            #[test]
            fn any_config_is_accepted_or_refused(entries in proptest::collection::vec(entry(), 0..6)) {
                let text = entries.join("\n");
                if let Err(err) = Config::parse(&text) {
                    prop_assert!(!err.to_string().is_empty());
                }
            }

            #[test]
            fn any_text_is_no_panic(text in "\\PC{0,80}") {
                let _ = Config::parse(&text);
            }
        }
    }

    fn field_of(text: &str) -> String {
        Config::parse(text)
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn compression_is_read_as_a_kind_and_its_settings_checked() {
        let config = Config::parse("compression: deflate").expect("valid");
        assert_eq!(
            config.session().compression,
            Some(crate::session::deflate::DeflateOffer::default())
        );
        assert!(
            config.to_yaml().contains("compression: deflate"),
            "written back as it was read"
        );
        let config = Config::parse("compression: {deflate: {server_no_context_takeover: true, client_max_window_bits: 10}}")
            .expect("valid");
        let offer = config.session().compression.expect("offered");
        assert!(offer.server_no_context_takeover && offer.client_max_window_bits == Some(10));
        assert_eq!(
            Config::parse("").expect("valid").session().compression,
            None
        );
        for (bad, says) in [
            ("compression: gzip", "unknown variant `gzip`"),
            (
                "compression: {deflate: {client_max_window_bits: 8}}",
                "client_max_window_bits must be 9..=15",
            ),
            ("compression: {deflate: {level: 11}}", "level must be 0..=9"),
            (
                "compression: {deflate: {window: 9}}",
                "unknown field `window`",
            ),
            (
                "target: tcp://127.0.0.1:9/\nscenario: {framing: newline}\nheartbeat: {interval: 0s}\ncompression: deflate",
                "WebSocket extension",
            ),
            (
                "target: sse+http://127.0.0.1:9/\nscenario: idle\nheartbeat: {interval: 0s}\ncompression: deflate",
                "WebSocket extension",
            ),
        ] {
            let err = field_of(bad);
            assert!(
                err.contains("`compression") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("").expect("defaults are valid");
        assert_eq!(config, Config::embedded_default());
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.target.is_none());
    }

    #[test]
    fn durations_are_human() {
        let config = Config::parse("message_interval: 250ms\nheartbeat: {interval: 30s}\n")
            .expect("valid config");
        assert_eq!(config.message_interval, Duration::from_millis(250));
        assert_eq!(config.heartbeat.interval, Duration::from_secs(30));
        assert_eq!(config.heartbeat.timeout, Heartbeat::default().timeout);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(field_of("users: -5").contains("`users`"));
        assert!(field_of("users: many").contains("`users`"));
        assert!(field_of("connect_rate: -3").contains("`connect_rate`"));
        assert!(field_of("target: http://example.test/").contains("`target`"));
        assert!(
            field_of("offline: {every: 0s, for: 1s}").contains("`every` must be longer than 0s")
        );
        assert!(
            field_of("offline: {every: 1m}").contains("`offline`"),
            "no `for`"
        );
        assert!(field_of("offline: {every: 1m, for: 1s, how: teleport}").contains("teleport"));
        let offline = Config::parse("offline: {every: {exponential: 10m}, for: 30s, how: vanish}")
            .expect("valid")
            .session()
            .offline
            .expect("offline");
        assert_eq!(offline.how, crate::session::settings::Away::Vanish);
        assert!(
            offline.expect_sync,
            "books are kept across the gap by default"
        );
        let plain =
            Config::parse("offline: {every: 1m, for: 1s, expect_sync: false}").expect("valid");
        assert!(!plain.session().offline.expect("offline").expect_sync);
        assert!(
            field_of("offline: {every: 1m, for: 1s, expect_sync: maybe}").contains("expect_sync")
        );
        let sse = "target: sse+http://127.0.0.1:9/events\nheartbeat: {interval: 0s}\n";
        assert!(field_of(sse).contains("give the scenario a `publish`"));
        assert!(
            field_of(&format!("{sse}scenario: {{extends: echo, publish: {{url: 'http://127.0.0.1:9/pub', method: GET}}}}"))
                .contains("scenario.publish.method")
        );
        assert!(
            Config::parse(&format!(
                "{sse}scenario: {{extends: echo, publish: {{url: 'http://127.0.0.1:9/pub'}}}}"
            ))
            .is_ok()
        );
        assert!(
            field_of("target: sse+http://127.0.0.1:9/\nscenario: idle\n")
                .contains("no WebSocket pings"),
            "an event stream has no pings to be the heartbeat"
        );
        assert!(field_of("target: not a url").contains("`target`"));
        assert!(field_of("heartbeat: {intervall: 1s}").contains("intervall"));
        assert!(field_of("bogus: 1").contains("bogus"));
        assert!(field_of("message_interval: soon").contains("`message_interval`"));
        assert!(field_of("reconnect: {jitter: 2}").contains("`reconnect.jitter`"));
        assert!(field_of("scenario: chat").contains("unknown scenario `chat`"));
        assert!(field_of("scenario: {login: [{sendd: x}]}").contains("sendd"));
        assert!(field_of("scenario: {room_size: 0}").contains("`scenario.room_size`"));
        assert!(field_of("schedule: sometimes").contains("`schedule`"));
        assert!(field_of("lifetime: {min: 2s, max: 1s}").contains("`lifetime.max`"));
        assert!(field_of("users: 50\nlimits: {max_users: 10}").contains("limits.max_users"));
        assert!(field_of("sla: {error_rate: 5}").contains("`sla.error_rate`"));
        assert!(field_of("sla: {error_rate: lots}").contains("`sla.error_rate`"));
        assert!(field_of("api: {token_file: /nonexistent}").contains("/nonexistent"));
        assert!(field_of("tls: {ca_file: /nonexistent.pem}").contains("`tls.ca_file`"));
        assert!(field_of("tls: {ca_file: Cargo.toml}").contains("`tls.ca_file`"));
    }

    #[test]
    fn errors_are_one_line() {
        for text in [
            "users: [1, 2",
            "heartbeat:\n  interval: x\n",
            "a: b: c",
            // regex errors draw a caret under the pattern, over four lines
            "scenario: {extends: im, replies: [{match: {regex: 'a(b'}, send: x}]}",
            // a token file that is not one: named as api.token_file, not as the config file
            "api: {token_file: /nonexistent/token}",
            "source_addresses: [192.0.2.77]",
        ] {
            assert!(!field_of(text).contains('\n'), "{text:?}");
        }
    }

    /// Live fields nested in the file are named as the file spells them, not by their flat
    /// API names (`heartbeat_interval`, `room_size` named fields the file does not have).
    #[test]
    fn nested_live_fields_are_named_as_in_the_file() {
        assert!(field_of("heartbeat: {interval: 50ms}").contains("`heartbeat.interval`"));
        let room = field_of("scenario: {extends: im, room_size: 2000000}");
        assert!(room.contains("`scenario.room_size`"), "{room}");
    }

    #[test]
    fn files_and_addresses_are_named_by_their_field() {
        assert!(field_of("api: {token_file: /nonexistent/token}").contains("`api.token_file`"));
        let fifo = tempfile::tempdir().expect("tempdir");
        assert!(
            field_of(&format!("api: {{token_file: {}}}", fifo.path().display()))
                .contains("not a regular file")
        );
        let foreign = field_of("source_addresses: [127.0.0.1, 192.0.2.77]");
        assert!(
            foreign.contains("`source_addresses[1]`")
                && foreign.contains("not an address of this host"),
            "{foreign}"
        );
    }

    #[test]
    fn sla_ratios_take_percent_or_fraction() {
        let config =
            Config::parse("sla: {error_rate: 0.1%, min_connected_ratio: 0.99, p99_rtt: 200ms}")
                .expect("valid");
        assert!((config.sla.error_rate.expect("set") - 0.001).abs() < 1e-12);
        let slos: Vec<_> = config
            .sla
            .thresholds()
            .into_iter()
            .map(|(slo, _)| slo.name())
            .collect();
        assert_eq!(
            slos,
            ["p99_rtt_seconds", "error_rate", "min_connected_ratio"]
        );
    }

    #[test]
    fn live_fields_reload_without_restart_the_rest_is_named() {
        let old = Config::parse("users: 5\nheartbeat: {interval: 5s}").expect("valid");
        let live = Config::parse(
            "users: 7\nheartbeat: {interval: 9s}\nscenario: {room_size: 3}\nsla: {error_rate: 1%}",
        )
        .expect("valid");
        // A described scenario equal to the built-in but for its room size is no change.
        let mut im = crate::scenario::Builtin::Im.spec();
        im.room_size = 3;
        let live = Config {
            scenario: crate::scenario::ScenarioChoice::Custom(Box::new(im)),
            ..live
        };
        assert_eq!(old.restart_only_changes(&live), Vec::<String>::new());
        let restart =
            Config::parse("connect_timeout: 3s\nheartbeat: {timeout: 1s}").expect("valid");
        assert_eq!(
            old.restart_only_changes(&restart),
            ["connect_timeout", "heartbeat"]
        );
    }

    #[test]
    fn every_duration_has_an_upper_bound() {
        for (yaml, field) in [
            ("connect_timeout: 500000000000y", "`connect_timeout`"),
            ("ack_timeout: 2h", "`ack_timeout`"),
            ("loss_grace: 2h", "`loss_grace`"),
            ("message_interval: 2h", "`message_interval`"),
            ("heartbeat: {interval: 2h}", "`heartbeat.interval`"),
            ("lifetime: {min: 1s, max: 100y}", "`lifetime.max`"),
            ("drain_timeout: 2h", "`drain_timeout`"),
            ("progress_interval: 10ms", "`progress_interval`"),
            ("shutdown_timeout: 2h", "`shutdown_timeout`"),
            ("reconnect: {max: 2h}", "`reconnect.max`"),
            ("limits: {max_users: 4000000000}", "`limits.max_users`"),
            (
                "scenario: {login: [{send: x, timeout: 3h}]}",
                "scenario.login[0].timeout",
            ),
        ] {
            let err = field_of(yaml);
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn schedules_with_times_of_their_own_set_the_mean_gap() {
        let config = Config::parse("schedule: {lognormal: {median: 2s, p99: 30s}}").expect("valid");
        let mean = config.message_interval.as_secs_f64();
        // median * exp(sigma^2 / 2), sigma = ln(15) / z(0.99)
        let sigma = 15f64.ln() / 2.326_347_874;
        assert!(
            (mean - 2.0 * (sigma * sigma / 2.0).exp()).abs() < 1e-6,
            "{mean}"
        );
        assert_eq!(
            Config::parse(&config.to_yaml()).expect("round trip"),
            config
        );
        let long = Config::parse(
            "schedule: {gaps: {uniform: {min: 1s, max: 3s}}, bursts: {on: 10s, off: 1m}, skew: 1.16}",
        )
        .expect("valid");
        assert_eq!(long.message_interval, Duration::from_secs(2));
        assert_eq!(Config::parse(&long.to_yaml()).expect("round trip"), long);
        for (yaml, field) in [
            (
                "message_interval: 1s\nschedule: {uniform: {min: 1s, max: 5s}}",
                "`message_interval`",
            ),
            (
                "schedule: {uniform: {min: 3s, max: 1s}}",
                "`schedule.uniform.max`",
            ),
            (
                "schedule: {lognormal: {median: 2s, p99: 1s}}",
                "`schedule.lognormal.p99`",
            ),
            ("schedule: {gaps: fixed, skew: 0.5}", "`schedule.skew`"),
            (
                "schedule: {gaps: fixed, bursts: {on: 0s, off: 1s}}",
                "`schedule.bursts.on`",
            ),
            ("schedule: {gaps: sometimes}", "`schedule`"),
            ("schedule: {gaps: fixed, often: 1}", "often"),
        ] {
            let err = field_of(yaml);
            assert!(err.contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn a_room_bigger_than_an_instance_is_refused_with_the_numbers() {
        let err = field_of(
            "users: 100\nlimits: {max_users: 100}\nscenario: {extends: im, room_size: 60}\nshard: {index: 0, count: 2}",
        );
        assert!(
            err.contains("`scenario.room_size`") && err.contains("60") && err.contains("50"),
            "{err}"
        );
        let grouped = field_of(
            "limits: {max_users: 100}\ngroups: [{name: town, users: 80, scenario: {extends: im, room_size: 80}}]\nshard: {index: 0, count: 2}",
        );
        assert!(
            grouped.contains("groups.town.scenario.room_size"),
            "{grouped}"
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let config =
            Config::parse("target: wss://chat.example.test/ws\nusers: 7\n").expect("valid config");
        assert_eq!(
            Config::parse(&config.to_yaml()).expect("round trip"),
            config
        );
    }
}
