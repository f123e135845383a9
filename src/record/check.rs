//! `wsfleet record --check`: the written scenario run with one user against its server until
//! each part it describes has happened (or the time is up), then drained, and each part
//! reported as matched or not.

use std::fmt::Write;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::metrics::{ConnectResult, Metrics};

/// Messages acked before the check has seen enough.
const ENOUGH_ACKS: u64 = 3;

/// What one user's replay of a scenario showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub connected: u64,
    pub connect_failures: u64,
    /// Heartbeats answered, if the scenario has an expected answer to its heartbeat.
    pub heartbeats: Option<u64>,
    /// Messages sent and acked, if the scenario sends any.
    pub messages: Option<(u64, u64)>,
    pub ack_timeouts: u64,
    pub deliveries: u64,
    pub unmatched: u64,
    pub invalid: u64,
}

impl CheckReport {
    fn of(metrics: &Metrics, heartbeat: bool, message: bool) -> CheckReport {
        let counts = metrics.message_counts();
        let connected = metrics.connect_result(ConnectResult::Ok).get();
        let attempts: u64 = ConnectResult::ALL
            .iter()
            .map(|&r| metrics.connect_result(r).get())
            .sum();
        CheckReport {
            connected,
            connect_failures: attempts - connected,
            heartbeats: heartbeat.then_some(counts.heartbeats),
            messages: message.then(|| (counts.sent, metrics.message_rtt.get_sample_count())),
            ack_timeouts: counts.ack_timeouts,
            deliveries: counts.deliveries_received + counts.own_echoes,
            unmatched: counts.frames_unmatched,
            invalid: counts.frames_invalid,
        }
    }

    /// Whether every part matched.
    pub fn passed(&self) -> bool {
        self.connected > 0
            && self.connect_failures == 0
            && self.heartbeats.is_none_or(|n| n > 0)
            && self
                .messages
                .is_none_or(|(sent, acked)| acked > 0 && acked + 1 >= sent)
            && self.ack_timeouts == 0
            && self.unmatched + self.invalid == 0
    }

    /// Seen enough to stop early.
    fn enough(&self) -> bool {
        self.connected > 0
            && self.heartbeats.is_none_or(|n| n > 0)
            && self.messages.is_none_or(|(_, acked)| acked >= ENOUGH_ACKS)
    }

    /// One line per part: matched or not.
    pub fn render(&self) -> String {
        let mark = |ok: bool| if ok { "matched" } else { "NOT matched" };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "connect and login: {} ({} connected, {} failed)",
            mark(self.connected > 0 && self.connect_failures == 0),
            self.connected,
            self.connect_failures
        );
        if let Some(n) = self.heartbeats {
            let _ = writeln!(out, "heartbeat: {} ({n} answered)", mark(n > 0));
        }
        if let Some((sent, acked)) = self.messages {
            let _ = writeln!(
                out,
                "messages and acks: {} ({sent} sent, {acked} acked, {} timed out)",
                mark(acked > 0 && acked + 1 >= sent && self.ack_timeouts == 0),
                self.ack_timeouts
            );
            let _ = writeln!(
                out,
                "deliveries: {} received (one user hears only the server's echo of its own, if it sends one; run a few users to measure delivery latency)",
                self.deliveries
            );
        }
        let _ = writeln!(
            out,
            "frames: {} ({} unmatched, {} invalid)",
            mark(self.unmatched + self.invalid == 0),
            self.unmatched,
            self.invalid
        );
        out
    }
}

/// Runs `yaml`'s scenario with one user for at most `within`, and reports.
pub async fn check(yaml: &str, within: Duration) -> anyhow::Result<CheckReport> {
    let mut config = Config::parse(yaml)?;
    config.users = 1;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let spec = config.scenario.spec();
    let heartbeat = spec.heartbeat.as_ref().is_some_and(|h| h.expect.is_some());
    let message = spec.message.is_some() && !config.message_interval.is_zero();
    let listener = TcpListener::bind(config.listen).await?;
    let daemon = Daemon::start(config, listener, CancellationToken::new()).await?;
    let deadline = tokio::time::Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    while tokio::time::Instant::now() < deadline
        && !CheckReport::of(daemon.metrics(), heartbeat, message).enough()
    {
        poll.tick().await;
    }
    let metrics = std::sync::Arc::clone(daemon.metrics());
    daemon.finish().await?;
    Ok(CheckReport::of(&metrics, heartbeat, message))
}
