//! What the target keeps for clients that come back (`--history`): each room's last messages
//! by cursor, bounded in count and age, and the sync that sends a returning client what it
//! missed after the cursor it names. One cursor counter serves every room, so the last cursor
//! a client received orders everything it received, whatever the room.
//!
//! History by cursor, not a queue per offline user: a client that vanished still looks
//! connected to the server until its idle timeout, and what was written to its dead socket
//! meanwhile is gone unless the server kept it regardless; a room's history is also one copy
//! of each message instead of one per member.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

/// How much history each room keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryLimits {
    /// Messages per room (the oldest go first).
    pub messages: usize,
    /// Messages older than this are gone.
    pub age: Duration,
}

/// One message as the room's history keeps it: the frame its members were sent.
struct Logged {
    cursor: u64,
    at: Instant,
    from: Arc<str>,
    frame: Utf8Bytes,
}

/// One room's history, oldest first.
#[derive(Default)]
pub struct RoomLog {
    entries: VecDeque<Logged>,
}

impl RoomLog {
    /// Keeps `frame` (sent by `from`, at `cursor`); returns how many old messages the limits
    /// pushed out.
    pub fn push(
        &mut self,
        cursor: u64,
        from: Arc<str>,
        frame: Utf8Bytes,
        limits: HistoryLimits,
    ) -> u64 {
        let now = Instant::now();
        self.entries.push_back(Logged {
            cursor,
            at: now,
            from,
            frame,
        });
        let mut evicted = 0;
        while self.entries.len() > limits.messages
            || self
                .entries
                .front()
                .is_some_and(|e| now.duration_since(e.at) > limits.age)
        {
            self.entries.pop_front();
            evicted += 1;
        }
        evicted
    }

    /// The messages after `cursor` not sent by `user` and younger than the age limit, with
    /// their cursors, oldest first.
    pub fn after<'a>(
        &'a self,
        cursor: u64,
        user: &'a str,
        limits: HistoryLimits,
    ) -> impl Iterator<Item = (u64, Utf8Bytes)> + 'a {
        let now = Instant::now();
        let start = self.entries.partition_point(|e| e.cursor <= cursor);
        self.entries
            .range(start..)
            .filter(move |e| &*e.from != user && now.duration_since(e.at) <= limits.age)
            .map(|e| (e.cursor, e.frame.clone()))
    }
}

/// A sync request's cursor: a number, its text, or nothing (`""` or `null`: a client that
/// has seen no message yet, owed everything since it first joined).
pub fn parse_cursor(value: &serde_json::Value) -> Result<Option<u64>, String> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(text) if text.is_empty() => Ok(None),
        serde_json::Value::String(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("`after` must be a cursor number, got {text:?}")),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`after` must be a cursor number, got {n}")),
        other => Err(format!("`after` must be a cursor number, got {other}")),
    }
}

/// What one sync sends, after the faults: the backlog as sent (each frame once, or twice),
/// and how many of it the faults cut or repeated.
#[derive(Debug, PartialEq)]
pub struct Sync {
    pub frames: Vec<Utf8Bytes>,
    pub truncated: u64,
    pub duplicated: u64,
}

impl Sync {
    /// The backlog `missed` (oldest first) under the sync faults: `truncate` > 0 keeps only
    /// its first that many; `twice` sends it all again after.
    pub fn of(mut missed: Vec<Utf8Bytes>, truncate: usize, twice: bool) -> Sync {
        let truncated = if truncate > 0 && missed.len() > truncate {
            let cut = missed.len() - truncate;
            missed.truncate(truncate);
            cut as u64
        } else {
            0
        };
        let duplicated = if twice { missed.len() as u64 } else { 0 };
        if twice {
            missed.extend_from_within(..);
        }
        Sync {
            frames: missed,
            truncated,
            duplicated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        messages: 3,
        age: Duration::from_secs(60),
    };

    fn frames(log: &RoomLog, cursor: u64, user: &str) -> Vec<u64> {
        log.after(cursor, user, LIMITS).map(|(c, _)| c).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn history_keeps_the_last_messages_by_cursor_within_its_limits() {
        let mut log = RoomLog::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut evicted = 0;
        for (cursor, from) in [(1, &a), (2, &b), (5, &a), (7, &b)] {
            evicted += log.push(cursor, Arc::clone(from), "m".into(), LIMITS);
        }
        assert_eq!(evicted, 1, "three kept");
        assert_eq!(frames(&log, 0, "c"), [2, 5, 7]);
        assert_eq!(frames(&log, 2, "c"), [5, 7], "after the cursor");
        assert_eq!(frames(&log, 2, "a"), [7], "not its own");
        assert_eq!(frames(&log, 7, "c"), [0u64; 0]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(frames(&log, 0, "c"), [0u64; 0], "too old");
        assert_eq!(log.push(8, a, "m".into(), LIMITS), 3, "the old ones go");
    }

    #[test]
    fn sync_faults_cut_or_repeat_the_backlog_and_count_it() {
        let backlog = || {
            (1..=5)
                .map(|i| Utf8Bytes::from(i.to_string()))
                .collect::<Vec<_>>()
        };
        let cut = Sync::of(backlog(), 2, false);
        assert_eq!((cut.frames.len(), cut.truncated, cut.duplicated), (2, 3, 0));
        let twice = Sync::of(backlog(), 0, true);
        assert_eq!((twice.frames.len(), twice.truncated), (10, 0));
        assert_eq!(twice.duplicated, 5);
        assert_eq!(Sync::of(backlog(), 9, false).frames.len(), 5, "nothing cut");
    }

    #[test]
    fn a_cursor_is_a_number_or_nothing() {
        use serde_json::json;
        assert_eq!(parse_cursor(&json!(12)), Ok(Some(12)));
        assert_eq!(parse_cursor(&json!("12")), Ok(Some(12)));
        assert_eq!(parse_cursor(&json!("")), Ok(None));
        assert_eq!(parse_cursor(&json!(null)), Ok(None));
        assert!(
            parse_cursor(&json!("x1"))
                .expect_err("not a number")
                .contains("x1")
        );
        assert!(parse_cursor(&json!(-1)).is_err());
        assert!(parse_cursor(&json!([1])).is_err());
    }
}
