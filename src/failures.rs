//! Failures a person must see, not only count: each failed connect and each disconnect the
//! fleet did not choose keeps its last sample (what exactly happened, and when) for the status
//! API, and is logged at most once per reason per [`LOG_EVERY`], with how many happened since
//! the last line — so a wrong path or a dead server shows in the terminal within seconds
//! without flooding it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::metrics::{ConnectResult, DisconnectReason};

/// At most one log line per reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Samples are cut to this many bytes: a server's answer is not ours to store whole.
const MAX_DETAIL: usize = 300;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    Connect(ConnectResult),
    Disconnect(DisconnectReason),
}

impl Failure {
    /// `connect.http_status`, `disconnect.server_close`, ...
    pub fn name(self) -> String {
        match self {
            Failure::Connect(result) => format!("connect.{}", result.as_str()),
            Failure::Disconnect(reason) => format!("disconnect.{}", reason.as_str()),
        }
    }
}

/// The last failure of one kind, as `/api/v1/status` shows it under `errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sample {
    /// Failures of this kind since the start.
    pub count: u64,
    /// The last one, e.g. `HTTP 404 Not Found for ws://127.0.0.1:9001/nope`.
    pub last: String,
    /// When the last one happened (RFC 3339, UTC).
    pub last_at: String,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    /// Failures since the last log line.
    unlogged: u64,
    last: String,
    last_at: SystemTime,
    logged_at: Option<Instant>,
}

/// The record of failures; shared by every user.
#[derive(Debug, Default)]
pub struct Failures {
    entries: Mutex<HashMap<Failure, Entry>>,
}

impl Failures {
    /// Records one failure and what exactly happened; logs it unless its kind was logged
    /// less than [`LOG_EVERY`] ago.
    pub fn record(&self, failure: Failure, detail: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(failure).or_insert_with(|| Entry {
            count: 0,
            unlogged: 0,
            last: String::new(),
            last_at: SystemTime::now(),
            logged_at: None,
        });
        entry.count += 1;
        entry.unlogged += 1;
        // Kept as it came (bounded); secrets are masked when a person sees it, not per failure.
        entry.last.clear();
        entry.last.push_str(truncate(detail, RAW_DETAIL));
        entry.last_at = SystemTime::now();
        if entry
            .logged_at
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            return;
        }
        entry.logged_at = Some(now);
        let (since_last, total) = (std::mem::take(&mut entry.unlogged), entry.count);
        let last = shown(&entry.last);
        drop(entries);
        match failure {
            Failure::Connect(result) => tracing::warn!(
                result = result.as_str(),
                since_last,
                total,
                "connect failed: {last}"
            ),
            Failure::Disconnect(reason) => tracing::warn!(
                reason = reason.as_str(),
                since_last,
                total,
                "disconnected: {last}"
            ),
        }
    }

    /// The last sample of every kind of failure seen, by name.
    pub fn samples(&self) -> BTreeMap<String, Sample> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .map(|(failure, entry)| {
                (
                    failure.name(),
                    Sample {
                        count: entry.count,
                        last: shown(&entry.last),
                        last_at: humantime::format_rfc3339_seconds(entry.last_at).to_string(),
                    },
                )
            })
            .collect()
    }
}

/// Raw detail kept per failure kind: enough that masking never sees a secret cut in half
/// before the sample is cut to [`MAX_DETAIL`].
const RAW_DETAIL: usize = 4 * MAX_DETAIL;

/// A sample as a person sees it: secrets masked, then cut to [`MAX_DETAIL`].
fn shown(raw: &str) -> String {
    truncate(&redact(raw), MAX_DETAIL).to_string()
}

/// At most `max` bytes of `text`, cut at a character boundary.
/// `text` with what looks like a secret masked as `***`, for logs, the status API and
/// summaries: URL query values and passwords (`?token=***`, `//user:***@`), JSON string fields
/// whose name says token, password, secret, key, auth or credential, and `Bearer`/`Basic`
/// credentials. Error details quote URLs and server frames, which may echo what users sent.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    use std::sync::LazyLock;
    static RULES: LazyLock<Vec<(regex::Regex, &'static str)>> = LazyLock::new(|| {
        [
            (r"([?&][^=&\s#]+=)[^&\s#\x22']+", "${1}***"),
            (r"(://[^:/@\s]+:)[^@\s]+@", "${1}***@"),
            (
                r#"(?i)("[a-z0-9_-]*(?:token|password|passwd|secret|key|auth|credential)[a-z0-9_-]*"\s*:\s*")(?:[^"\\]|\\.)*"?"#,
                "${1}***\"",
            ),
            (r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]+", "${1} ***"),
        ]
        .into_iter()
        .map(|(pattern, with)| (regex::Regex::new(pattern).expect("valid pattern"), with))
        .collect()
    });
    let mut text = std::borrow::Cow::Borrowed(text);
    for (pattern, with) in RULES.iter() {
        if let std::borrow::Cow::Owned(masked) = pattern.replace_all(&text, *with) {
            text = std::borrow::Cow::Owned(masked);
        }
    }
    text
}

/// Parser messages (YAML, regex) sometimes span lines; the contract is one line per error.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_details() {
        let cases = [
            (
                "HTTP 401 Unauthorized for ws://chat.test/ws?user=u1&token=s3cr3t",
                "HTTP 401 Unauthorized for ws://chat.test/ws?user=***&token=***",
            ),
            (
                "no WebSocket from wss://alice:hunter2@chat.test/ws",
                "no WebSocket from wss://alice:***@chat.test/ws",
            ),
            (
                r#"last frame: {"op":"login","user":"u1","password":"pw \" 1","apiKey":"k"}"#,
                r#"last frame: {"op":"login","user":"u1","password":"***","apiKey":"***"}"#,
            ),
            (
                "Authorization: Bearer abc.def-ghi",
                "Authorization: Bearer ***",
            ),
            ("nothing secret here", "nothing secret here"),
            (
                r#"cut short: {"token":"abc"#,
                r#"cut short: {"token":"***""#,
            ),
        ];
        for (text, masked) in cases {
            assert_eq!(redact(text), masked);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn samples_keep_the_last_detail_and_the_count() {
        let failures = Failures::default();
        let kind = Failure::Connect(ConnectResult::HttpStatus);
        failures.record(kind, "HTTP 404 Not Found for ws://a/x");
        failures.record(kind, "HTTP 404 Not Found for ws://a/y");
        let samples = failures.samples();
        let sample = &samples["connect.http_status"];
        assert_eq!(sample.count, 2);
        assert_eq!(sample.last, "HTTP 404 Not Found for ws://a/y");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reason_is_logged_at_most_once_per_period_with_what_it_missed() {
        let failures = Failures::default();
        let kind = Failure::Disconnect(DisconnectReason::Reset);
        failures.record(kind, "reset");
        let logged = |f: &Failures| {
            f.entries.lock().expect("lock")[&kind]
                .logged_at
                .expect("logged")
        };
        let first = logged(&failures);
        for _ in 0..5 {
            failures.record(kind, "reset");
        }
        assert_eq!(logged(&failures), first, "quiet within the period");
        assert_eq!(failures.entries.lock().expect("lock")[&kind].unlogged, 5);
        tokio::time::advance(LOG_EVERY).await;
        failures.record(kind, "reset");
        assert!(logged(&failures) > first);
        assert_eq!(failures.entries.lock().expect("lock")[&kind].unlogged, 0);
    }

    #[test]
    fn details_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
