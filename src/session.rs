//! One simulated user: connect (timed), log in, heartbeat, send on schedule, match acks and
//! room deliveries, and reconnect with backoff, for as long as its cancellation token lives.
//!
//! Memory per held connection is what limits a fleet, so a user is one task whose state is a
//! few words while idle: the connect and conversation futures are boxed (their large state
//! lives on the heap only while in use), all timers share one `sleep_until` on the earliest
//! deadline, and socket buffers are sized in [`ws_config`].

mod connect;
mod conversation;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::backoff;
use crate::config::{Config, Heartbeat, Lifetime, Reconnect, Schedule};
use crate::load::Desired;
use crate::metrics::{DisconnectReason, Metrics};
use crate::pacer::Pacer;
use crate::scenario::Scenario;

/// What every user of a fleet shares, read-only.
pub struct Context {
    pub target: Url,
    pub scenario: Scenario,
    pub connect_timeout: Duration,
    /// Bound on one frame write; a server that stops reading must not freeze a user.
    pub write_timeout: Duration,
    pub heartbeat: Heartbeat,
    pub reconnect: Reconnect,
    pub schedule: Schedule,
    pub ack_timeout: Duration,
    pub loss_grace: Duration,
    pub lifetime: Option<Lifetime>,
    pub ws_config: WebSocketConfig,
    /// Built once: a TLS config per connect would reload the root store every time.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub metrics: Arc<Metrics>,
    pub pacer: Pacer,
    /// Local addresses connections are made from, in turn; empty = the system's choice.
    pub source_addresses: Vec<std::net::IpAddr>,
    next_source: std::sync::atomic::AtomicUsize,
    /// True while the generator is saturated: no new connections then.
    pub saturated: watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        config: &Config,
        target: Url,
        scenario: Scenario,
        metrics: Arc<Metrics>,
        saturated: watch::Receiver<bool>,
        tls_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Context {
        Context {
            tls: connect::tls_config(&target, scenario.url.is_some(), tls_roots),
            target,
            scenario,
            connect_timeout: config.connect_timeout,
            write_timeout: config.heartbeat.timeout.max(Duration::from_secs(1)),
            heartbeat: config.heartbeat.clone(),
            reconnect: config.reconnect.clone(),
            schedule: config.schedule,
            ack_timeout: config.ack_timeout,
            loss_grace: config.loss_grace,
            lifetime: config.lifetime.clone(),
            ws_config: ws_config(),
            metrics,
            pacer: Pacer::new(config.connect_rate),
            source_addresses: config.source_addresses.clone(),
            next_source: std::sync::atomic::AtomicUsize::new(0),
            saturated,
        }
    }
}

impl Context {
    /// The next source address, round-robin.
    pub fn source_address(&self) -> Option<std::net::IpAddr> {
        if self.source_addresses.is_empty() {
            return None;
        }
        let turn = self
            .next_source
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.source_addresses[turn % self.source_addresses.len()])
    }
}

/// Socket buffers sized for many mostly-idle connections: tungstenite's defaults reserve
/// 128 KiB of read buffer per socket, which alone would cost 2.4 GB at 19k users.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// One simulated user.
pub struct User {
    pub id: u32,
    pub ctx: Arc<Context>,
    pub desired: watch::Receiver<Desired>,
    pub cancel: CancellationToken,
    /// Sequence of the last message sent; it carries on across reconnects, so receivers can
    /// tell a message the server lost from one never sent.
    pub seq: u64,
}

impl User {
    pub fn new(
        id: u32,
        ctx: Arc<Context>,
        desired: watch::Receiver<Desired>,
        cancel: CancellationToken,
    ) -> User {
        User {
            id,
            ctx,
            desired,
            cancel,
            seq: 0,
        }
    }

    /// Keeps this user connected until its token is cancelled.
    pub async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            // Paused or saturated: no new connections (and no reconnects) until that ends.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.desired.wait_for(|d| !d.paused) => {}
            }
            let mut saturated = self.ctx.saturated.clone();
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = saturated.wait_for(|s| !s) => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.ctx.pacer.wait() => {}
            }
            let room_size = self.desired.borrow().load.room_size;
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                attempt = Box::pin(connect::open(&self.ctx, self.id, room_size)) => attempt,
            };
            let metrics = Arc::clone(&self.ctx.metrics);
            match attempt {
                Ok((socket, identity)) => {
                    failures = 0;
                    metrics.users_active.inc();
                    let reason = Box::pin(conversation::run(&mut self, socket, identity)).await;
                    metrics.users_active.dec();
                    metrics.disconnect(reason).inc();
                    tracing::debug!(user = self.id, reason = reason.as_str(), "disconnected");
                    match reason {
                        DisconnectReason::ClientClose => return,
                        // Planned: reconnect at once (through the pacer), no backoff.
                        DisconnectReason::Churn | DisconnectReason::RoomChange => continue,
                        _ => {}
                    }
                }
                Err(result) => {
                    metrics.connect_result(result).inc();
                    tracing::debug!(user = self.id, result = result.as_str(), "connect failed");
                }
            }
            failures = failures.saturating_add(1);
            let wait = backoff::delay(&self.ctx.reconnect, failures);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
