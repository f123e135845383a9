//! What one simulated user is told by the config: its heartbeat, reconnect delays, churn,
//! message schedule, TLS and network link, owned here and gathered into the file's schema by
//! [`crate::config`] (which this module does not know).

use std::path::PathBuf;
use std::time::Duration;

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Everything a fleet's users share of the config ([`crate::config::Config::session`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub heartbeat: Heartbeat,
    pub reconnect: Reconnect,
    pub schedule: Schedule,
    pub ack_timeout: Duration,
    pub loss_grace: Duration,
    pub lifetime: Option<Lifetime>,
    /// Open arrivals: users arrive at a rate and stay a while, instead of being held.
    pub arrivals: Option<Arrivals>,
    /// The longest message (or plain-stream frame) a user reads; longer ends the connection.
    pub max_message_size: usize,
    /// After a reconnect, send again what the last connection left unacknowledged.
    pub resend_unacked: bool,
    /// Local addresses connections are made from, in turn; empty = the system's choice.
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Users going away on a schedule (`offline:`).
    pub offline: Option<Offline>,
    /// The users' sockets go through the shaper (the config gave `network:`, `none` too):
    /// its profile is the live load's `network`, which may then change. Without it sockets
    /// are unwrapped and the profile stays `none`.
    pub shaped: bool,
    /// The permessage-deflate offer of WebSocket upgrades (`compression: deflate`).
    pub compression: Option<super::deflate::DeflateOffer>,
}

/// TLS settings for `wss://` and `tls://` targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust besides the public web roots (a staging CA, or a
    /// server's self-signed certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS, with `key_file`; re-read when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); re-read when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Lowest TLS version offered: `1.2` (default) or `1.3`.
    #[serde(default, skip_serializing_if = "is_default_version")]
    pub min_version: TlsVersion,
    /// The server name sent (SNI) and verified, instead of the target URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any server certificate. For rehearsals only: logged as a warning at start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

fn is_default_version(version: &TlsVersion) -> bool {
    *version == TlsVersion::default()
}

impl TlsConfig {
    pub fn is_default(&self) -> bool {
        self == &TlsConfig::default()
    }
}

/// How each user spaces its messages: the shape of the gaps (whose mean is the live
/// `message_interval`), optional bursts, and how unevenly users share the sending.
///
/// In YAML: `fixed`, `poisson` (or `exponential`), `{uniform: {min, max}}` or
/// `{lognormal: {median, p99}}`, or the long form
/// `{gaps: ..., bursts: {on, off}, skew: 1.2, speakers: 1%}`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Schedule {
    pub gaps: Gaps,
    /// Users send only during `on` periods, then stay silent for `off` (each user at its
    /// own phase).
    pub bursts: Option<Bursts>,
    /// Users do not all send at the same rate: each user's rate is the group's times a factor
    /// drawn once per user from a Pareto distribution of this shape (mean 1; 1.16 is the
    /// "80/20" split), so the group's total rate stays what `message_interval` says.
    pub skew: Option<f64>,
    /// The fraction of the group's users who send at all (the same users every time); the
    /// others only listen. `message_interval` is the speakers' pace.
    pub speakers: Option<f64>,
}

/// The distribution of the gap between two messages of one user.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Gaps {
    /// Exactly `message_interval`.
    #[default]
    Fixed,
    /// Exponential with mean `message_interval`: Poisson arrivals.
    Exponential,
    /// Uniform between `min` and `max`.
    Uniform { min: Duration, max: Duration },
    /// Log-normal with this median and 99th percentile: most gaps short, a long tail.
    Lognormal { median: Duration, p99: Duration },
}

/// Send-and-rest cycles of one user.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bursts {
    #[serde(with = "humantime_serde")]
    pub on: Duration,
    #[serde(with = "humantime_serde")]
    pub off: Duration,
}

/// The 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

impl Gaps {
    /// The mean gap a schedule with times of its own implies (`uniform`, `lognormal`):
    /// what `message_interval` is for it. `None` for the shapes that take the interval as
    /// given.
    pub fn mean(&self) -> Option<Duration> {
        match *self {
            Gaps::Fixed | Gaps::Exponential => None,
            Gaps::Uniform { min, max } => Some((min + max) / 2),
            Gaps::Lognormal { median, p99 } => {
                let sigma = lognormal_sigma(median, p99);
                Some(median.mul_f64((sigma * sigma / 2.0).exp()))
            }
        }
    }

    /// One gap, as a multiple of the mean gap (the samples average 1).
    pub fn sample_unit(&self, rng: &mut impl rand::Rng) -> f64 {
        use rand_distr::Distribution;
        match *self {
            Gaps::Fixed => 1.0,
            Gaps::Exponential => rand_distr::Exp1.sample(rng),
            Gaps::Uniform { min, max } => {
                let (min, max) = (min.as_secs_f64(), max.as_secs_f64());
                let mean = (min + max) / 2.0;
                if mean <= 0.0 {
                    return 1.0;
                }
                (min + (max - min) * rand::RngExt::random::<f64>(rng)) / mean
            }
            Gaps::Lognormal { median, p99 } => {
                let sigma = lognormal_sigma(median, p99);
                // exp(sigma * Z) / exp(sigma^2 / 2): the median's factor cancels in the ratio.
                let z: f64 = rand_distr::StandardNormal.sample(rng);
                (sigma * z - sigma * sigma / 2.0).exp()
            }
        }
    }
}

/// The log-normal's sigma from its median and 99th percentile.
fn lognormal_sigma(median: Duration, p99: Duration) -> f64 {
    let (median, p99) = (median.as_secs_f64(), p99.as_secs_f64());
    if median <= 0.0 || p99 <= median {
        0.0
    } else {
        (p99 / median).ln() / Z99
    }
}

impl Schedule {
    /// The next gap of user `user`, as a multiple of the mean gap: drawn from the shape and
    /// divided by the user's rate factor (bounded, so no tail overflows a duration). A fixed
    /// schedule without skew, the common case, draws nothing.
    pub fn gap_factor(&self, user: u32) -> f64 {
        if self.gaps == Gaps::Fixed && self.skew.is_none() {
            return 1.0;
        }
        let unit = self.gaps.sample_unit(&mut rand::rng()) / self.rate_factor(user);
        unit.clamp(0.0, 1e6)
    }

    /// The factor by which user `user`'s rate differs from the group's: 1 without `skew`;
    /// with it, a Pareto draw of mean 1 fixed by the user's number (the same user keeps its
    /// rate across reconnects), capped at 1000.
    pub fn rate_factor(&self, user: u32) -> f64 {
        let Some(shape) = self.skew else {
            return 1.0;
        };
        let scale = (shape - 1.0) / shape;
        (scale / self.user_fraction(user).powf(1.0 / shape)).min(1000.0)
    }

    /// Whether user `user` sends at all (see `speakers`).
    pub fn speaks(&self, user: u32) -> bool {
        self.speakers
            .is_none_or(|share| self.user_fraction(user ^ 0x2545_f491) < share)
    }

    /// The fraction of users who send.
    pub fn speaking(&self) -> f64 {
        self.speakers.unwrap_or(1.0)
    }

    /// A number in (0, 1) fixed by the user's number (splitmix64 of it): the same user draws
    /// the same rate and burst phase on every connection.
    pub fn user_fraction(&self, user: u32) -> f64 {
        let mut x = u64::from(user).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Whether `at` falls in a silent period of user `user`, whose cycles run from `epoch`
    /// at its own phase (so a group's users do not all burst together); if so, when its next
    /// `on` period starts.
    pub fn resting_until(
        &self,
        user: u32,
        epoch: tokio::time::Instant,
        at: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let bursts = self.bursts?;
        let cycle = bursts.on + bursts.off;
        if bursts.off.is_zero() || cycle.is_zero() {
            return None;
        }
        // Another draw than the user's rate: phase and rate are independent.
        let phase = cycle.mul_f64(self.user_fraction(user.rotate_left(16) ^ 0x5bd1_e995));
        let since = at.saturating_duration_since(epoch) + phase;
        let into = since.as_nanos() % cycle.as_nanos();
        let into = Duration::from_nanos(u64::try_from(into).unwrap_or(u64::MAX));
        (into >= bursts.on).then(|| crate::clock::later(at, cycle - into))
    }
}

/// How `schedule:` is written: a name, one distribution (`{uniform: {min, max}}`), or the
/// long form. Written by hand rather than as serde enums, which YAML would want tagged.
mod form {
    use super::*;
    use serde::de::Error as _;
    use serde_norway::{Mapping, Value};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct UniformForm {
        #[serde(with = "humantime_serde")]
        min: Duration,
        #[serde(with = "humantime_serde")]
        max: Duration,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LognormalForm {
        #[serde(with = "humantime_serde")]
        median: Duration,
        #[serde(with = "humantime_serde")]
        p99: Duration,
    }

    const EXPECTED: &str = "expected fixed, poisson, exponential, {uniform: {min, max}}, {lognormal: {median, p99}} or {gaps, bursts, skew, speakers}";

    /// `1%` or `0.01`.
    fn ratio_of(value: Value) -> Result<f64, String> {
        match value {
            Value::String(text) => match text.trim().strip_suffix('%') {
                Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
                None => text.trim().parse::<f64>(),
            }
            .map_err(|_| format!("expected a fraction like 0.01 or 1%, got {text:?}")),
            other => inner(other),
        }
    }

    fn inner<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
        serde_norway::from_value(value).map_err(|e| e.to_string())
    }

    fn gaps_of(value: Value) -> Result<Gaps, String> {
        match value {
            Value::String(name) => match name.as_str() {
                "fixed" => Ok(Gaps::Fixed),
                "poisson" | "exponential" => Ok(Gaps::Exponential),
                other => Err(format!("{EXPECTED}, got `{other}`")),
            },
            Value::Mapping(map) if map.len() == 1 => {
                let (key, value) = map.into_iter().next().expect("one entry");
                match key.as_str() {
                    Some("uniform") => {
                        inner(value).map(|UniformForm { min, max }| Gaps::Uniform { min, max })
                    }
                    Some("lognormal") => inner(value)
                        .map(|LognormalForm { median, p99 }| Gaps::Lognormal { median, p99 }),
                    _ => Err(format!("{EXPECTED}, got `{}`", key.as_str().unwrap_or("?"))),
                }
            }
            _ => Err(EXPECTED.into()),
        }
    }

    fn value_of(gaps: Gaps) -> Value {
        let one = |name: &str, inner: Result<Value, serde_norway::Error>| {
            let mut map = Mapping::new();
            map.insert(name.into(), inner.unwrap_or_default());
            Value::Mapping(map)
        };
        match gaps {
            Gaps::Fixed => "fixed".into(),
            Gaps::Exponential => "poisson".into(),
            Gaps::Uniform { min, max } => {
                one("uniform", serde_norway::to_value(UniformForm { min, max }))
            }
            Gaps::Lognormal { median, p99 } => one(
                "lognormal",
                serde_norway::to_value(LognormalForm { median, p99 }),
            ),
        }
    }

    impl<'de> Deserialize<'de> for Schedule {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
            let value = Value::deserialize(d)?;
            let Value::Mapping(mut map) = value else {
                return gaps_of(value).map(Schedule::from).map_err(D::Error::custom);
            };
            if !["gaps", "bursts", "skew", "speakers"]
                .iter()
                .any(|k| map.contains_key(*k))
            {
                return gaps_of(Value::Mapping(map))
                    .map(Schedule::from)
                    .map_err(D::Error::custom);
            }
            let gaps = match map.remove("gaps") {
                Some(gaps) => gaps_of(gaps).map_err(D::Error::custom)?,
                None => Gaps::Fixed,
            };
            let bursts = map
                .remove("bursts")
                .map(|b| {
                    serde_norway::from_value(b)
                        .map_err(|e| D::Error::custom(format!("bursts: {e}")))
                })
                .transpose()?;
            let skew = map
                .remove("skew")
                .map(|s| {
                    serde_norway::from_value(s).map_err(|e| D::Error::custom(format!("skew: {e}")))
                })
                .transpose()?;
            let speakers = map
                .remove("speakers")
                .map(|s| ratio_of(s).map_err(|e| D::Error::custom(format!("speakers: {e}"))))
                .transpose()?;
            if let Some(key) = map.keys().next() {
                return Err(D::Error::custom(format!(
                    "unknown field `{}`, expected gaps, bursts, skew or speakers",
                    key.as_str().unwrap_or("?")
                )));
            }
            Ok(Schedule {
                gaps,
                bursts,
                skew,
                speakers,
            })
        }
    }

    impl<'de> Deserialize<'de> for Spread {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Spread, D::Error> {
            let value = Value::deserialize(d)?;
            let spread = match value {
                Value::String(text) => humantime::parse_duration(&text)
                    .map(|mean| Spread {
                        shape: Gaps::Fixed,
                        mean,
                    })
                    .map_err(|e| format!("`{text}`: {e}")),
                Value::Mapping(map) if map.get("exponential").is_some() && map.len() == 1 => {
                    let mean = map.get("exponential").cloned().unwrap_or_default();
                    inner::<String>(mean).and_then(|text| {
                        humantime::parse_duration(&text)
                            .map(|mean| Spread {
                                shape: Gaps::Exponential,
                                mean,
                            })
                            .map_err(|e| format!("exponential: `{text}`: {e}"))
                    })
                }
                other => gaps_of(other).and_then(|shape| {
                    shape
                        .mean()
                        .map(|mean| Spread { shape, mean })
                        .ok_or_else(|| {
                            "expected a duration, {exponential: MEAN}, {uniform: {min, max}} or {lognormal: {median, p99}}".to_string()
                        })
                }),
            };
            spread.map_err(D::Error::custom)
        }
    }

    impl Serialize for Spread {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mean = humantime::format_duration(self.mean).to_string();
            match self.shape {
                Gaps::Fixed => mean.serialize(s),
                Gaps::Exponential => {
                    let mut map = Mapping::new();
                    map.insert("exponential".into(), mean.into());
                    Value::Mapping(map).serialize(s)
                }
                shape => value_of(shape).serialize(s),
            }
        }
    }

    impl From<Gaps> for Schedule {
        fn from(gaps: Gaps) -> Schedule {
            Schedule {
                gaps,
                ..Schedule::default()
            }
        }
    }

    impl Serialize for Schedule {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.bursts.is_none() && self.skew.is_none() && self.speakers.is_none() {
                return value_of(self.gaps).serialize(s);
            }
            let mut map = Mapping::new();
            map.insert("gaps".into(), value_of(self.gaps));
            if let Some(bursts) = self.bursts {
                map.insert(
                    "bursts".into(),
                    serde_norway::to_value(bursts).unwrap_or_default(),
                );
            }
            if let Some(skew) = self.skew {
                map.insert("skew".into(), skew.into());
            }
            if let Some(speakers) = self.speakers {
                map.insert("speakers".into(), speakers.into());
            }
            Value::Mapping(map).serialize(s)
        }
    }
}

/// Sessions that come and go: users arrive as a Poisson process at `rate` (per second,
/// fleet-wide; each shard its share), each stays a time drawn from `stay`, then leaves. The
/// group's `users` caps how many are there at once; concurrency settles at rate × mean stay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub rate: f64,
    pub stay: Spread,
}

/// A random span of time: `5m` (always), `{exponential: 5m}` (that mean),
/// `{uniform: {min, max}}` or `{lognormal: {median, p99}}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub shape: Gaps,
    pub mean: Duration,
}

impl Spread {
    /// One draw.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> Duration {
        self.mean
            .mul_f64(self.shape.sample_unit(rng).clamp(0.0, 1e6))
    }
}

/// `offline:` — users go away on a schedule and come back, as phones do: connected for a
/// time drawn from `every`, then away for one drawn from `for`, then reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offline {
    pub every: Spread,
    #[serde(rename = "for")]
    pub away: Spread,
    #[serde(default)]
    pub how: Away,
    /// The server stores what a user misses while away and syncs it on return (the
    /// default): the user's books stay open across the gap and the missed messages are
    /// expected. False: a returning user's books open afresh at its login, as for any join.
    #[serde(default = "expects_sync")]
    pub expect_sync: bool,
}

fn expects_sync() -> bool {
    true
}

/// How a user goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Away {
    /// A clean close (a WebSocket close frame), as an app sent to the background.
    #[default]
    Close,
    /// Gone without a word, as a phone losing coverage: the socket is held, unread and
    /// unwritten, for the time away (the server learns only from its own timeouts), then
    /// dropped.
    Vanish,
    /// Still connected but sending nothing, heartbeats included, for the time away: the
    /// server's timeout ends it (the user is then away for the rest of the time), or the user
    /// speaks again when the time is up, on the same connection.
    Silent,
}

/// Bounds of a connection's lifetime under churn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetime {
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

/// WebSocket ping heartbeat of every connected user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Time between pings; zero turns the heartbeat off.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A ping without a pong after this long is a `heartbeat_timeout` disconnect.
    #[serde(default = "default_heartbeat_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Delay before a user reconnects: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
    /// Fraction of each delay that is random: 1.0 is "full jitter", 0.0 none.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(250)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_jitter() -> f64 {
    1.0
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: default_heartbeat_interval(),
            timeout: default_heartbeat_timeout(),
        }
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
            jitter: default_jitter(),
        }
    }
}

// `network:` — the link a group's users sit behind: one-way latency with jitter, bandwidth
// per direction, stalls and handovers, given field by field or as a named preset taken from
// published figures. What the config says; `super::shaper` makes the bytes feel it.

/// A weak link, both directions. The latency is one way, added in each direction (so a
/// round trip gains twice it); jitter draws each chunk's delay uniformly within ±`jitter`
/// of it, order kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Network {
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Server to user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down: Option<Bandwidth>,
    /// User to server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<Bandwidth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<Stall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// Now and then nothing moves either way for a while (a radio's retransmissions, a tunnel):
/// every time drawn from `every`, for one drawn from `for`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub every: Spread,
    #[serde(rename = "for")]
    pub lasts: Spread,
}

/// A phone switching networks: every time drawn from `every` the connection vanishes
/// without a close, and the user comes back after `gap` (from the next of its
/// `source_addresses`, when there are several).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub every: Spread,
    #[serde(with = "humantime_serde", default = "default_gap")]
    pub gap: Duration,
}

fn default_gap() -> Duration {
    Duration::from_secs(1)
}

/// A link's rate in bits per second, written `256kbit`, `1mbit`, `1.5mbit`, `1gbit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    bits_per_second: u64,
}

impl Bandwidth {
    pub fn bytes_per_second(self) -> f64 {
        self.bits_per_second as f64 / 8.0
    }

    /// How long `bytes` take to pass.
    pub fn time_for(self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_second())
    }
}

/// The slowest and fastest links a profile may name.
const SLOWEST: u64 = 1_000;
const FASTEST: u64 = 100_000_000_000;

impl std::str::FromStr for Bandwidth {
    type Err = String;

    fn from_str(text: &str) -> Result<Bandwidth, String> {
        let trimmed = text.trim();
        let units = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)];
        let Some((number, scale)) = units
            .iter()
            .find_map(|(unit, scale)| Some((trimmed.strip_suffix(unit)?, *scale)))
        else {
            return Err(format!(
                "{text:?} is not a bandwidth: write a number of bit, kbit, mbit or gbit (bits per second), e.g. 256kbit"
            ));
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a bandwidth: {number:?} is not a number"))?;
        let bits = value * scale;
        if !bits.is_finite() || bits < SLOWEST as f64 || bits > FASTEST as f64 {
            return Err(format!("bandwidth {text:?} is outside 1kbit..100gbit"));
        }
        Ok(Bandwidth {
            bits_per_second: bits.round() as u64,
        })
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_second;
        let units = [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ];
        match units.iter().find(|(scale, _)| bits.is_multiple_of(*scale)) {
            Some((scale, unit)) => write!(f, "{}{unit}", bits / scale),
            None => write!(f, "{bits}bit"),
        }
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bandwidth, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// The named links, from WebPageTest's connectivity profiles
/// (`www/settings/connectivity.ini.sample` of WPO-Foundation/webpagetest: round trip and
/// rates; our latency is half the round trip, each way) and, for `satellite`, the physics of
/// a geostationary hop (README "Weak networks").
pub const PRESETS: &[(&str, Network)] = &[
    ("3g-slow", preset(200, 400_000, 400_000)),
    ("3g", preset(150, 1_600_000, 768_000)),
    ("4g", preset(85, 9_000_000, 9_000_000)),
    ("lte", preset(35, 12_000_000, 12_000_000)),
    ("satellite", preset(300, 25_000_000, 3_000_000)),
];

const fn preset(latency_ms: u64, down: u64, up: u64) -> Network {
    Network {
        latency: Duration::from_millis(latency_ms),
        jitter: Duration::ZERO,
        down: Some(Bandwidth {
            bits_per_second: down,
        }),
        up: Some(Bandwidth {
            bits_per_second: up,
        }),
        stall: None,
        handover: None,
    }
}

impl Network {
    /// The link as it is: nothing added either way (`network: none`). A group given it is
    /// shaped all the same, so its profile can change while it runs.
    pub const NONE: Network = Network {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        down: None,
        up: None,
        stall: None,
        handover: None,
    };

    /// The preset called `name` (or [`Network::NONE`], called `none`).
    pub fn preset(name: &str) -> Result<Network, String> {
        if name == NONE_NAME {
            return Ok(Network::NONE);
        }
        PRESETS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, network)| *network)
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown network preset {name:?}; known: {NONE_NAME}, {}",
                    names.join(", ")
                )
            })
    }

    /// What is wrong with this profile, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.jitter > self.latency {
            return Some(format!(
                "jitter {} is above latency {}: a chunk cannot arrive before it was sent",
                humantime::format_duration(self.jitter),
                humantime::format_duration(self.latency)
            ));
        }
        let zero = [
            ("stall.every", self.stall.map(|s| s.every)),
            ("stall.for", self.stall.map(|s| s.lasts)),
            ("handover.every", self.handover.map(|h| h.every)),
        ];
        let (name, _) = zero
            .into_iter()
            .find(|(_, spread)| spread.is_some_and(|s| s.mean.is_zero()))?;
        Some(format!("`{name}` must be longer than 0s"))
    }
}

/// What `network: none` is called.
const NONE_NAME: &str = "none";

/// A profile as a person reads it in the change log and on the live page: its preset's name
/// when it is one, else its parts (`50ms±10ms, down 1mbit, up 256kbit, stalls, handovers`).
impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Network::NONE {
            return f.write_str(NONE_NAME);
        }
        if let Some((name, _)) = PRESETS.iter().find(|(_, preset)| preset == self) {
            return f.write_str(name);
        }
        let fmt = humantime::format_duration;
        let mut parts = vec![fmt(self.latency).to_string()];
        if !self.jitter.is_zero() {
            parts[0] = format!("{}±{}", parts[0], fmt(self.jitter));
        }
        parts.extend(self.down.map(|rate| format!("down {rate}")));
        parts.extend(self.up.map(|rate| format!("up {rate}")));
        parts.extend(self.stall.map(|_| "stalls".to_string()));
        parts.extend(self.handover.map(|_| "handovers".to_string()));
        f.write_str(&parts.join(", "))
    }
}

/// The fields of a profile as written: any may be left out, and `preset:` fills what is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    preset: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    jitter: Option<Duration>,
    down: Option<Bandwidth>,
    up: Option<Bandwidth>,
    stall: Option<Stall>,
    handover: Option<Handover>,
}

impl Written {
    fn resolve(self) -> Result<Network, String> {
        let base = match &self.preset {
            Some(name) => Network::preset(name)?,
            None => Network::NONE,
        };
        Ok(Network {
            latency: self.latency.unwrap_or(base.latency),
            jitter: self.jitter.unwrap_or(base.jitter),
            down: self.down.or(base.down),
            up: self.up.or(base.up),
            stall: self.stall.or(base.stall),
            handover: self.handover.or(base.handover),
        })
    }
}

/// `network: 3g`, or `network: {preset: 3g, jitter: 30ms}`, or the fields alone.
impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        struct Profile;

        impl<'de> Visitor<'de> for Profile {
            type Value = Network;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a preset name or {latency, jitter, down, up, stall, handover}")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Network, E> {
                Network::preset(name).map_err(E::custom)
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Network, M::Error> {
                let written = Written::deserialize(de::value::MapAccessDeserializer::new(map))?;
                written.resolve().map_err(de::Error::custom)
            }
        }

        d.deserialize_any(Profile)
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    fn parse(text: &str) -> Result<Network, String> {
        serde_norway::from_str(text).map_err(|err| err.to_string())
    }

    #[test]
    fn bandwidths_are_bits_per_second_with_a_unit() {
        let rate: Bandwidth = "1mbit".parse().expect("valid");
        assert_eq!(rate.bytes_per_second(), 125_000.0);
        assert_eq!(rate.time_for(100_000), Duration::from_millis(800));
        assert_eq!(
            "1.5mbit".parse::<Bandwidth>().expect("valid").to_string(),
            "1500kbit"
        );
        assert_eq!(
            "256kbit".parse::<Bandwidth>().expect("valid").to_string(),
            "256kbit"
        );
        for wrong in ["1mbps", "fast", "0kbit", "-3mbit", "1000gbit", "kbit"] {
            let err = wrong.parse::<Bandwidth>().expect_err(wrong);
            assert!(err.contains(wrong), "{err}");
        }
    }

    #[test]
    fn a_profile_is_a_preset_its_fields_or_both() {
        let three_g = parse("3g").expect("preset");
        assert_eq!(three_g.latency, Duration::from_millis(150));
        assert_eq!(
            three_g.up.map(|u| u.to_string()).as_deref(),
            Some("768kbit")
        );
        let jittery = parse("{preset: 3g, jitter: 30ms}").expect("preset and a field");
        assert_eq!(
            (jittery.latency, jittery.jitter),
            (three_g.latency, Duration::from_millis(30))
        );
        let own = parse("{latency: 50ms, down: 1mbit, stall: {every: 30s, for: 2s}}").expect("own");
        assert_eq!((own.latency, own.up), (Duration::from_millis(50), None));
        assert_eq!(
            own.stall.map(|s| s.lasts.mean),
            Some(Duration::from_secs(2))
        );
        let handover = parse("{handover: {every: 1m}}").expect("handover");
        assert_eq!(
            handover.handover.map(|h| h.gap),
            Some(Duration::from_secs(1))
        );
        // What is written out reads back the same.
        let again = parse(&serde_norway::to_string(&own).expect("serialize")).expect("again");
        assert_eq!(again, own);
    }

    #[test]
    fn a_wrong_profile_says_what_is_wrong() {
        assert!(
            parse("5g")
                .expect_err("unknown")
                .contains("known: none, 3g-slow")
        );
        assert!(
            parse("{latency: 50ms, speed: 1mbit}")
                .expect_err("field")
                .contains("speed")
        );
        assert!(parse("{down: 1mbps}").expect_err("unit").contains("1mbps"));
        let jitter = parse("{latency: 10ms, jitter: 20ms}").expect("parses");
        assert!(jitter.problem().expect("refused").contains("jitter"));
        let stall = parse("{stall: {every: 0s, for: 1s}}").expect("parses");
        assert!(stall.problem().expect("refused").contains("stall.every"));
        assert_eq!(parse("lte").expect("preset").problem(), None);
    }
}
