//! What one simulated user is told by the config: its heartbeat, reconnect delays, churn,
//! message schedule and TLS, owned here and gathered into the file's schema by
//! [`crate::config`] (which this module does not know).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The longest message (or plain-stream frame) a user reads; longer ends the connection.
    pub max_message_size: usize,
    /// After a reconnect, send again what the last connection left unacknowledged.
    pub resend_unacked: bool,
    /// Local addresses connections are made from, in turn; empty = the system's choice.
    pub source_addresses: Vec<std::net::IpAddr>,
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

/// How each user spaces its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Fixed,
    Poisson,
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
