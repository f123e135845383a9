//! The desired load: the part of the configuration that may change while the daemon runs.
//!
//! The config file, the command line and `PATCH /api/v1/load` all produce a [`Load`] through
//! [`Load::validate`], so one set of rules (and one set of field names) guards every source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds that keep a typo from asking for something no machine can do.
pub const MAX_USERS: u32 = 10_000_000;
pub const MAX_CONNECT_RATE: f64 = 1_000_000.0;
pub const MAX_PAYLOAD_SIZE: usize = 1 << 20;
pub const MIN_MESSAGE_INTERVAL: Duration = Duration::from_millis(1);

/// What the fleet should be doing right now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    /// Number of simulated users to keep connected.
    pub users: u32,
    /// Connection attempts per second, for ramping up, ramping down and reconnecting.
    pub connect_rate: f64,
    /// Time between two messages of one user; zero sends no messages.
    #[serde(with = "humantime_serde")]
    pub message_interval: Duration,
    /// Bytes of padding carried by each message.
    pub payload_size: usize,
}

/// A partial update of [`Load`], as `PATCH /api/v1/load` accepts it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadPatch {
    pub users: Option<u32>,
    pub connect_rate: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub message_interval: Option<Duration>,
    pub payload_size: Option<usize>,
}

/// A load value that breaks a rule; names the field as the config file and the API spell it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct LoadError {
    pub field: &'static str,
    pub problem: String,
}

impl LoadError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

impl Load {
    /// Checks every rule and returns the load unchanged if all hold.
    pub fn validate(self) -> Result<Self, LoadError> {
        if self.users > MAX_USERS {
            return Err(LoadError::new(
                "users",
                format!("must be at most {MAX_USERS}, got {}", self.users),
            ));
        }
        if !(self.connect_rate.is_finite()
            && self.connect_rate > 0.0
            && self.connect_rate <= MAX_CONNECT_RATE)
        {
            return Err(LoadError::new(
                "connect_rate",
                format!(
                    "must be a number of connects per second above 0 and at most {MAX_CONNECT_RATE}, got {}",
                    self.connect_rate
                ),
            ));
        }
        if !self.message_interval.is_zero() && self.message_interval < MIN_MESSAGE_INTERVAL {
            return Err(LoadError::new(
                "message_interval",
                format!(
                    "must be 0 (no messages) or at least {}, got {}",
                    humantime::format_duration(MIN_MESSAGE_INTERVAL),
                    humantime::format_duration(self.message_interval)
                ),
            ));
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
    pub fn apply(&self, patch: &LoadPatch) -> Result<Load, LoadError> {
        Load {
            users: patch.users.unwrap_or(self.users),
            connect_rate: patch.connect_rate.unwrap_or(self.connect_rate),
            message_interval: patch.message_interval.unwrap_or(self.message_interval),
            payload_size: patch.payload_size.unwrap_or(self.payload_size),
        }
        .validate()
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
    fn zero_interval_means_no_messages_and_is_valid() {
        let patch = LoadPatch {
            message_interval: Some(Duration::ZERO),
            ..Default::default()
        };
        assert!(base().apply(&patch).is_ok());
    }
}
