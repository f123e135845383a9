//! Why a configuration was refused.

use crate::load::LoadError;
use crate::scenario::ScenarioError;

/// Why a configuration was refused; each message names the file, field or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config field `{field}`: {message}")]
    Syntax { field: String, message: String },
    #[error("config field {0}")]
    Load(#[from] LoadError),
    #[error("config field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// [`ConfigError::Invalid`] for an element of a list (`source_addresses[2]`).
    #[error("config field `{field}`: {problem}")]
    Listed { field: String, problem: String },
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// An error in one group's own config.
    #[error("in {group}: {source}")]
    Group {
        group: String,
        source: Box<ConfigError>,
    },
    #[error("{source} (set by --{flag})")]
    Flag {
        flag: String,
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The config field at fault, as the error names it.
    pub(super) fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { field, .. } => Some(field),
            ConfigError::Load(err) => Some(&err.field),
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Listed { field, .. } => Some(field),
            ConfigError::Scenario(_) => Some("scenario"),
            ConfigError::Read { .. } | ConfigError::Flag { .. } | ConfigError::Group { .. } => None,
        }
    }
}
