//! What a run was and what ran it, for audit: the wsfleet version and the commit it was built
//! from, the config's hash (SHA-256 of the effective config, secrets included, so two runs
//! with the same hash ran the same config) beside the masked config the report shows, the
//! target, when it started and ended, and the host. The summary and the report carry it;
//! `--report-dir` names its files by it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a run was and what ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `wsfleet 0.1.0`.
    pub version: String,
    /// The commit the binary was built from (`-dirty` with uncommitted changes), or `unknown`.
    pub build: String,
    /// SHA-256 of the effective config (hex).
    pub config_sha256: String,
    /// The target, credentials in its URL masked.
    pub target: String,
    /// RFC 3339, UTC, seconds.
    pub started_at: String,
    pub ended_at: String,
    pub host: String,
}

impl Provenance {
    /// The provenance of a run of `config` against `target` that started at `started`.
    pub fn new(
        config: &crate::config::Config,
        target: &url::Url,
        started: std::time::SystemTime,
    ) -> Provenance {
        let effective = serde_json::to_string(config).unwrap_or_default();
        Provenance {
            version: format!("wsfleet {}", env!("CARGO_PKG_VERSION")),
            build: env!("WSFLEET_BUILD").to_string(),
            config_sha256: hex::encode(Sha256::digest(effective.as_bytes())),
            target: crate::failures::redact(target.as_str()).into_owned(),
            started_at: rfc3339(started),
            ended_at: rfc3339(started),
            host: crate::host::hostname(),
        }
    }

    /// Marks the run ended now.
    pub fn ended(mut self) -> Provenance {
        self.ended_at = rfc3339(std::time::SystemTime::now());
        self
    }

    /// A file name that sorts by start and tells configs apart: `20261202T135313Z-3fa9c2d1`.
    pub fn stem(&self) -> String {
        let compact: String = self
            .started_at
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        format!(
            "{compact}-{}",
            &self.config_sha256[..8.min(self.config_sha256.len())]
        )
    }
}

fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_config_hashes_the_same_and_the_stem_sorts_by_start() {
        let config = crate::config::Config::embedded_default();
        let target: url::Url = "ws://user:secret@127.0.0.1:9001/ws".parse().expect("url");
        let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        let a = Provenance::new(&config, &target, start);
        let b = Provenance::new(&config, &target, start);
        assert_eq!(a.config_sha256, b.config_sha256);
        assert_eq!(a.config_sha256.len(), 64);
        assert!(!a.target.contains("secret"), "{}", a.target);
        assert_eq!(a.started_at, "2026-11-30T00:53:20Z");
        assert_eq!(
            a.stem(),
            format!("20261130T005320Z-{}", &a.config_sha256[..8])
        );
        let other = crate::config::Config::parse("users: 7").expect("config");
        assert_ne!(
            Provenance::new(&other, &target, start).config_sha256,
            a.config_sha256
        );
    }
}
