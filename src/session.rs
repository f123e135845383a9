//! One simulated user: connect (timed), log in, heartbeat, send on schedule, match acks and
//! room deliveries, and reconnect with backoff, until the supervisor stops its ticket.
//!
//! Memory per held connection is what limits a fleet, so a user is one task whose state is a
//! few words while idle: the connect and conversation futures are boxed (their large state
//! lives on the heap only while in use), all timers share one `sleep_until` on the earliest
//! deadline, and socket buffers are sized in [`ws_config`].
//!
//! Parts, each depending only on those before it: `deflate` (permessage-deflate under the
//! WebSocket), `wire` (the socket type, connect failures, a polite close), `upgrade` (TLS and the HTTP upgrade), `connect` (an attempt: TCP, upgrade,
//! login), `conversation` (one connection's protocol state, a state machine with no I/O) and
//! `talk` (the loop that drives a conversation over any `Sink + Stream`).

mod backoff;
mod connect;
mod conversation;
pub mod deflate;
pub mod settings;
mod shaper;
mod sse;
mod talk;
pub mod tls;
mod upgrade;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use crate::failures::{Failure, Failures};
use crate::history::History;
use crate::load::{Desired, Load};
use crate::metrics::{ConnectResult, DisconnectReason, Metrics};
use crate::pacer::Pacer;
use crate::roster::{Books, Roster, Slot, Ticket};
use crate::scenario::Scenario;
use crate::shard::Shard;
use crate::telemetry::Telemetry;
use crate::topology::Topology;
pub use settings::{Heartbeat, Lifetime, Offline, Reconnect, Schedule, Settings, TlsConfig};

/// What every user of one group shares, read-only.
pub struct Context {
    /// The group's position in the fleet's groups (its `group` label's index).
    pub group: usize,
    pub target: Url,
    /// This instance's part of the fleet: users are local ids, identities fleet-wide.
    pub shard: Shard,
    pub scenario: Scenario,
    /// What the config tells every user (heartbeat, reconnect, timeouts, churn, ...).
    pub settings: Settings,
    /// When this group's users began: the origin of their send-and-rest cycles.
    pub epoch: tokio::time::Instant,
    /// Bound on one frame write; a server that stops reading must not freeze a user.
    pub write_timeout: Duration,
    pub ws_config: WebSocketConfig,
    /// Built once: a TLS config per connect would reload the root store every time.
    pub tls: tls::ClientTls,
    pub metrics: Arc<Metrics>,
    /// The last failures, for the status API.
    pub failures: Arc<Failures>,
    /// The run's history; the fleet writes its load changes there.
    pub history: Arc<History>,
    /// Connect permits at `connect_rate`, shared by every group; the supervisor sets the rate.
    pub pacer: Arc<Pacer>,
    /// What each user of the group publishes to the others (sequences sent, connected or not).
    pub roster: Roster,
    /// Conversations whose books are not settled, in every group; the drain waits for none.
    pub books: Arc<Books>,
    next_source: std::sync::atomic::AtomicUsize,
    /// Sockets users of every group may hold: the descriptors kept for the API are never theirs.
    pub sockets: Arc<SocketBudget>,
    /// Where each user's event stream resumes across its connections (SSE targets only: kept
    /// here, not by the user, so other users carry nothing for it).
    resumes: Option<std::sync::Mutex<std::collections::HashMap<u32, Arc<sse::Resume>>>>,
    /// What users carry from one connection to the next: their books while away (groups
    /// that go `offline:` to a server that syncs) and the last cursor they saw (scenarios
    /// whose deliveries carry one). Made only for such groups, kept here so other users carry
    /// nothing for it.
    kept: Option<std::sync::Mutex<std::collections::HashMap<u32, Kept>>>,
    /// Where handed over users left from, until they connect again from another of the
    /// `source_addresses` (made only for a shaped link with handovers and several addresses).
    left_from: Option<std::sync::Mutex<std::collections::HashMap<u32, std::net::IpAddr>>>,
}

/// What one user carries between connections ([`Context::keep`]).
#[derive(Default)]
pub struct Kept {
    /// Its delivery books, kept open while it is away.
    pub books: Option<crate::scenario::tracking::Tracker>,
    /// `{{last_seen.cursor}}`.
    pub cursor: String,
}

/// What the groups of one fleet share: one connect rate, one set of books, one socket budget.
#[derive(Clone)]
pub struct Shared {
    pub pacer: Arc<Pacer>,
    pub books: Arc<Books>,
    pub sockets: Arc<SocketBudget>,
}

impl Shared {
    /// The shared parts of this instance's share (`shard`) of a fleet connecting at
    /// `connect_rate` fleet-wide.
    pub fn new(connect_rate: f64, shard: Shard) -> Shared {
        Shared {
            pacer: Arc::new(Pacer::new(shard.rate(connect_rate))),
            books: Arc::default(),
            sockets: Arc::new(SocketBudget::new(crate::host::user_sockets(
                crate::health::open_fds().unwrap_or(0),
            ))),
        }
    }
}

/// One group of users as the config describes it: what its users are told and say.
pub struct GroupSetup {
    /// The group's position in the fleet's groups, and its name.
    pub index: usize,
    pub name: String,
    /// The fleet's group count: with more than one, identities carry the group's name.
    pub of: usize,
    pub target: Url,
    pub scenario: Scenario,
    pub settings: Settings,
    pub tls: tls::ClientTls,
}

/// How many sockets users hold, against the most they may; one atomic add per attempt.
#[derive(Debug)]
pub struct SocketBudget {
    open: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl SocketBudget {
    pub fn new(max: usize) -> SocketBudget {
        SocketBudget {
            open: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// `n` sockets to open, held until the guard drops; none when the budget is spent.
    pub fn take(&self, n: usize) -> Option<SocketPermit<'_>> {
        use std::sync::atomic::Ordering;
        let before = self.open.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max {
            self.open.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(SocketPermit(self, n))
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Sockets of a [`SocketBudget`], given back on drop.
pub struct SocketPermit<'a>(&'a SocketBudget, usize);

impl Drop for SocketPermit<'_> {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(self.1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Context {
    /// What the users of `group` in this instance's part (`shard`) of a fleet share.
    pub fn new(group: GroupSetup, shard: Shard, telemetry: &Telemetry, shared: &Shared) -> Context {
        let GroupSetup {
            index,
            name,
            of,
            target,
            mut scenario,
            settings,
            tls,
        } = group;
        if of > 1 {
            scenario.set_group(&name, index);
        }
        let kept = keeps_books(&settings, &scenario) || reads_cursor(&scenario);
        Context {
            group: index,
            epoch: tokio::time::Instant::now(),
            shard,
            tls,
            scenario,
            write_timeout: settings.heartbeat.timeout.max(Duration::from_secs(1)),
            ws_config: ws_config(settings.max_message_size),
            metrics: Arc::clone(&telemetry.metrics),
            failures: Arc::clone(&telemetry.failures),
            history: Arc::clone(&telemetry.history),
            pacer: Arc::clone(&shared.pacer),
            roster: Roster::default(),
            books: Arc::clone(&shared.books),
            next_source: std::sync::atomic::AtomicUsize::new(0),
            sockets: Arc::clone(&shared.sockets),
            resumes: is_sse(&target).then(Default::default),
            kept: kept.then(Default::default),
            left_from: (settings.shaped && settings.source_addresses.len() > 1)
                .then(Default::default),
            target,
            settings,
        }
    }
}

impl Context {
    /// How this group's users are laid out into rooms under `load`.
    pub fn topology(&self, load: &Load) -> Topology {
        self.scenario.topology(load.room_size)
    }

    /// The fleet-wide id of this instance's user `local` in `topology`.
    pub fn global_id(&self, local: u32, topology: Topology) -> u32 {
        topology.global(&self.shard, local)
    }

    /// This instance's share of the users of `load`.
    pub fn local_users(&self, load: &Load) -> u32 {
        self.topology(load).local_users(&self.shard, load.users)
    }

    /// Where this group's users record their measurements.
    pub fn meter(&self) -> crate::metrics::Meter<'_> {
        self.metrics.group(self.group)
    }

    /// Where user `local`'s event stream resumes (made at its first connect), if the group's
    /// target is an event stream.
    pub fn stream_resume(&self, local: u32) -> Option<Arc<sse::Resume>> {
        let mut resumes = self
            .resumes
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(resumes.entry(local).or_default()))
    }

    /// Whether this group's users keep their books while away.
    pub fn keeps_books(&self) -> bool {
        keeps_books(&self.settings, &self.scenario)
    }

    /// Puts away what user `local` carries to its next connection: books count as unsettled
    /// while kept (the drain waits for them to come back).
    pub fn keep(&self, local: u32, kept: Kept) {
        let Some(map) = &self.kept else { return };
        if kept.books.is_some() {
            self.books.open();
        }
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(earlier) = map.insert(local, kept)
            && earlier.books.is_some()
        {
            self.books.close();
        }
    }

    /// The last cursor user `local` saw, for its next login.
    pub fn last_seen(&self, local: u32) -> String {
        let Some(map) = &self.kept else {
            return String::new();
        };
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&local)
            .map(|k| k.cursor.clone())
            .unwrap_or_default()
    }

    /// Takes back user `local`'s kept books, if it has any.
    pub fn take_books(&self, local: u32) -> Option<crate::scenario::tracking::Tracker> {
        let mut map = self
            .kept
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let books = map.get_mut(&local)?.books.take();
        if books.is_some() {
            self.books.close();
        }
        books
    }

    /// Ends user `local`'s kept books for good (it is not coming back): what it still
    /// awaited is lost.
    pub fn give_up_books(&self, local: u32) {
        if let Some(mut books) = self.take_books(local) {
            books.finish();
            let lost = books.take_lost();
            self.meter().add(crate::metrics::Count::Lost, lost.live);
            self.meter().add(crate::metrics::Count::LostSync, lost.sync);
        }
    }

    /// Whether user `local` is away with its books kept.
    pub fn holds_books(&self, local: u32) -> bool {
        let Some(map) = &self.kept else { return false };
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&local).is_some_and(|k| k.books.is_some())
    }

    /// Sockets a connected user holds: an SSE user has its publish connection too.
    pub fn sockets_per_user(&self) -> usize {
        if self.resumes.is_some() { 2 } else { 1 }
    }

    /// The reconnection time user `local`'s event stream asked for (`retry:`).
    pub fn stream_retry(&self, local: u32) -> Option<std::time::Duration> {
        let resumes = self
            .resumes
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        resumes.get(&local)?.retry()
    }

    /// User `local` was handed over from `left`: its next connection comes from another.
    pub fn source_after(&self, local: u32, left: std::net::IpAddr) {
        if let Some(map) = &self.left_from {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(local, left);
        }
    }

    /// The source address of user `local`'s next connection: after a handover the one
    /// following the address it left from, else the next in turn.
    pub fn source_for(&self, local: u32) -> Option<std::net::IpAddr> {
        let addresses = &self.settings.source_addresses;
        let left = (self.left_from.as_ref())
            .and_then(|map| map.lock().unwrap_or_else(|e| e.into_inner()).remove(&local));
        match left.and_then(|left| addresses.iter().position(|a| *a == left)) {
            Some(at) => Some(addresses[(at + 1) % addresses.len()]),
            None => self.source_address(),
        }
    }

    /// The next source address, round-robin.
    pub fn source_address(&self) -> Option<std::net::IpAddr> {
        if self.settings.source_addresses.is_empty() {
            return None;
        }
        let turn = self
            .next_source
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(self.settings.source_addresses[turn % self.settings.source_addresses.len()])
    }
}

/// Whether users of this group keep their books across time away (on schedule or in a sync
/// storm): their deliveries are tracked, and the server syncs — as `offline.expect_sync`
/// says, or, without `offline:`, as a scenario whose deliveries carry a cursor implies.
fn keeps_books(settings: &Settings, scenario: &Scenario) -> bool {
    let syncs = settings
        .offline
        .map_or_else(|| reads_cursor(scenario), |o| o.expect_sync);
    syncs
        && scenario
            .message
            .as_ref()
            .is_some_and(|m| m.delivery.is_some())
}

/// Whether the scenario's deliveries carry a cursor (`{{last_seen.cursor}}`).
fn reads_cursor(scenario: &Scenario) -> bool {
    (scenario.message.as_ref())
        .and_then(|m| m.delivery.as_ref())
        .is_some_and(|d| !d.cursor.is_empty())
}

/// `ws://` and `wss://` speak WebSocket; `tcp://` and `tls://` are plain streams.
pub fn is_websocket(url: &url::Url) -> bool {
    matches!(url.scheme(), "ws" | "wss")
}

/// `sse+http://` and `sse+https://` are Server-Sent Events streams.
pub fn is_sse(url: &url::Url) -> bool {
    matches!(url.scheme(), "sse+http" | "sse+https")
}

/// Socket buffers sized for many mostly-idle connections: tungstenite's defaults reserve
/// 128 KiB of read buffer per socket, which alone would cost 2.4 GB at 19k users, and keep
/// both buffers at their largest size for good; ours are freed whenever the socket has
/// nothing to move (our vendored tungstenite's `release_idle_buffers`). No message or frame
/// longer than `max_message_size` is buffered: it ends the connection.
pub fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(0)
        .release_idle_buffers(true)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// One simulated user.
pub struct User {
    /// This instance's number for the user (dense from 0); its identity uses the fleet-wide
    /// id ([`Context::global_id`]).
    pub id: u32,
    pub ctx: Arc<Context>,
    pub desired: watch::Receiver<Desired>,
    /// Its slot (its public state: its sequence carries on across reconnects and respawns,
    /// so receivers can tell a message the server lost from one never sent), and the ticket
    /// the supervisor ends this task by.
    pub ticket: Ticket,
    /// Messages the last connection left unacknowledged, to send again on the next one
    /// (`resend_unacked`; empty otherwise). A slice, not a `Vec`: every user holds one.
    pub unacked: Box<[(u64, tokio::time::Instant)]>,
    /// The supervisor got this user's first connect permit before spawning it.
    pub admitted: bool,
}

impl User {
    /// User `id` of `ctx`'s group, to be run by a new task.
    pub fn new(id: u32, ctx: Arc<Context>, desired: watch::Receiver<Desired>) -> User {
        let ticket = ctx.roster.slot(id).ticket();
        User {
            id,
            ctx,
            desired,
            ticket,
            unacked: Box::default(),
            admitted: false,
        }
    }

    /// This user's public state.
    pub fn slot(&self) -> &Arc<Slot> {
        self.ticket.slot()
    }

    /// Resolves when the supervisor ends this task (ramp-down, departure, shutdown).
    async fn cancelled(&self) {
        self.ticket.stopped().await
    }

    /// Keeps this user connected until its token is cancelled or the fleet drains; then
    /// its slot says no task runs it any more (the supervisor said one did when it spawned it).
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self) -> impl std::future::Future<Output = ()> {
        // A block, not an `async fn`: that would keep the user twice (its argument, and the
        // local the argument is moved into), in every user's task.
        async move {
            self.hold().await;
            self.ctx.give_up_books(self.id);
            self.slot().set_running(false);
        }
    }

    async fn hold(&mut self) {
        let mut failures: u32 = 0;
        // The waits between connections are boxed: inline, their futures would make every
        // user's task as big as the biggest of them for as long as it lives, connected or not.
        // Nothing of a failed attempt lives on while connected (that would be in every
        // connected user's task too).
        while Box::pin(self.admit()).await {
            let topology = self.ctx.topology(&self.desired.borrow().load);
            let ctx = Arc::clone(&self.ctx);
            // Held for as long as this attempt's socket lives.
            let socket = ctx.sockets.take(ctx.sockets_per_user());
            let attempt = match &socket {
                Some(_) => tokio::select! {
                    _ = self.cancelled() => return,
                    attempt = Box::pin(connect::open(&self.ctx, self.id, topology, &self.desired)) => attempt,
                },
                None => Err(wire::ConnectFailure::new(
                    ConnectResult::FdsExhausted,
                    format!(
                        "users hold all {} sockets they may; the file descriptors left are kept for the API (host::RESERVED_FDS)",
                        ctx.sockets.max()
                    ),
                )),
            };
            // Moved whole: a failure is recorded here, and only its Retry-After kept.
            let attempt = attempt.map_err(|failure| self.record_failure(failure));
            let retry_after = match attempt {
                Ok(connection) => {
                    failures = 0;
                    ctx.meter().users_active().inc();
                    self.slot().set_connected(true);
                    let (ended, held) = talk::run(self, connection).await;
                    self.slot().set_connected(false);
                    ctx.meter().users_active().dec();
                    ctx.meter().disconnect(ended.reason).inc();
                    tracing::debug!(
                        user = self.id,
                        reason = ended.reason.as_str(),
                        "disconnected"
                    );
                    if let Some(detail) = &ended.detail {
                        ctx.failures
                            .record(Failure::Disconnect(ended.reason), detail);
                    }
                    match ended.reason {
                        DisconnectReason::ClientClose => return,
                        // Planned: reconnect at once (through the pacer), no backoff.
                        DisconnectReason::Churn | DisconnectReason::RoomChange => continue,
                        DisconnectReason::Offline | DisconnectReason::Handover => {
                            if ended.reason == DisconnectReason::Handover
                                && let Some(left) = held.as_ref().and_then(|c| c.socket.local_ip())
                            {
                                ctx.source_after(self.id, left);
                            }
                            // Boxed: a held socket and a timer in the task itself would make
                            // every user's task bigger, away or not.
                            if Box::pin(self.away(held, ended.away)).await {
                                continue;
                            }
                            return;
                        }
                        _ => None,
                    }
                }
                Err(retry_after) => retry_after,
            };
            failures = failures.saturating_add(1);
            // The server's Retry-After (or an event stream's `retry:`), when it gave one, is
            // the least we wait.
            let wait = backoff::delay(&self.ctx.settings.reconnect, failures)
                .max(retry_after.unwrap_or_default())
                .max(self.ctx.stream_retry(self.id).unwrap_or_default());
            if !Box::pin(self.rest(wait)).await {
                return;
            }
        }
    }

    /// Counts and records a failed connect; returns the wait the server asked for, if any.
    fn record_failure(&self, failure: wire::ConnectFailure) -> Option<Duration> {
        self.ctx.meter().connect_result(failure.result).inc();
        if let Some(status) = failure.status {
            self.ctx.metrics.http_status(status).inc();
        }
        self.ctx
            .failures
            .record(Failure::Connect(failure.result), &failure.detail);
        failure.retry_after
    }

    /// Waits `wait` before the next attempt; false when the user is cancelled meanwhile.
    async fn rest(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// Stays away for a time drawn from `offline.for` (or `left`: what is left of one, or a
    /// sync storm's time), holding a
    /// vanished user's socket (unread, unwritten) meanwhile. False when the user is
    /// cancelled while away.
    async fn away<S>(&self, held: Option<S>, left: Option<Duration>) -> bool {
        let drawn = || Some(self.ctx.settings.offline?.away.sample(&mut rand::rng()));
        let Some(gone) = left.or_else(drawn) else {
            return true;
        };
        let meter = self.ctx.meter();
        let offline_now = meter.users_offline();
        offline_now.inc();
        // A drain cuts the time away short: the user comes back for what it missed, so the
        // books settle with it.
        let mut desired = self.desired.clone();
        let back = tokio::select! {
            _ = self.cancelled() => false,
            _ = tokio::time::sleep(gone) => true,
            _ = desired.wait_for(|d| d.draining), if self.ctx.holds_books(self.id) => true,
        };
        offline_now.dec();
        drop(held);
        back
    }

    /// Waits until this user may connect and has a connect permit. Decisions are taken when
    /// the permit is granted, not before: pausing, saturation or a drain sends a waiting user
    /// back to wait (its place in the pacer's queue given up, at no cost). False when the user
    /// is to end: cancelled (ramp-down, shutdown) or the fleet drains.
    async fn admit(&mut self) -> bool {
        if std::mem::take(&mut self.admitted) && !self.ticket.is_stopped() {
            return true;
        }
        // A user away with its books kept comes back even to a drain (paused or not), for
        // what it missed: the verdict waits for it.
        let returning = self.ctx.holds_books(self.id);
        let may = move |d: &Desired| d.may_connect() || (returning && d.draining);
        loop {
            let allowed = tokio::select! {
                _ = self.ticket.stopped() => return false,
                desired = self.desired.wait_for(|d| may(d) || d.draining) => {
                    desired.map(|d| may(&d)).unwrap_or(false)
                }
            };
            if !allowed {
                return false;
            }
            let granted = tokio::select! {
                _ = self.ticket.stopped() => return false,
                _ = self.ctx.pacer.acquire() => true,
                _ = self.desired.wait_for(|d| !may(d)) => false,
            };
            if granted && may(&self.desired.borrow()) {
                return true;
            }
        }
    }
}

/// A context whose users would connect to a closed port, for tests of what happens before.
#[cfg(test)]
pub(crate) fn test_context(connect_rate: f64) -> Arc<Context> {
    test_context_with(&format!("connect_rate: {connect_rate}"))
}

/// [`test_context`] from a config of its own.
#[cfg(test)]
pub(crate) fn test_context_with(yaml: &str) -> Arc<Context> {
    let config = crate::config::Config::parse(yaml).expect("valid");
    let shard = config.shard().expect("shard");
    let group = GroupSetup {
        index: 0,
        name: crate::groups::DEFAULT_GROUP.into(),
        of: 1,
        target: (config.target.clone())
            .unwrap_or_else(|| Url::parse("ws://127.0.0.1:1/ws").expect("url")),
        scenario: config.compile_scenario().expect("scenario"),
        settings: config.session(),
        tls: config.client_tls().expect("tls"),
    };
    let shared = Shared::new(config.connect_rate, shard);
    Arc::new(Context::new(group, shard, &Telemetry::default(), &shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    use super::test_context as context;

    /// Heap bytes this thread has allocated and not freed since `start` (jemalloc's exact
    /// per-thread counters, not its sampled profile).
    fn thread_heap_since(start: i64) -> i64 {
        use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};
        let allocated = allocatedp::read()
            .expect("jemalloc thread.allocatedp")
            .get();
        let freed = deallocatedp::read()
            .expect("jemalloc thread.deallocatedp")
            .get();
        allocated as i64 - freed as i64 - start
    }

    /// What a WebSocket connection still holds once it has received and sent a 4 KiB frame
    /// and found nothing more to read (a current-thread runtime: all of it is this thread's).
    async fn held_after_a_big_frame_each_way(config: WebSocketConfig) -> i64 {
        use futures_util::{FutureExt, SinkExt, StreamExt};
        use std::io::Write;
        use tokio_tungstenite::tungstenite::{Message, protocol::Role};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("bound"))
            .await
            .expect("connects");
        let (mut server, _) = listener.accept().expect("accepts");
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, Some(config))
                .await;
        let frame = [&[0x82, 126, 0x10, 0x00][..], &[7; 4096]].concat(); // binary, 4096 bytes

        let start = thread_heap_since(0);
        server.write_all(&frame).expect("the frame is sent");
        let received = ws.next().await.expect("a frame").expect("a valid frame");
        assert_eq!(received.len(), 4096);
        drop(received);
        ws.send(Message::binary(vec![7; 4096]))
            .await
            .expect("the frame is written");
        assert!(ws.next().now_or_never().is_none(), "nothing more to read");
        thread_heap_since(start)
    }

    /// Our connections give their read and write buffers back while idle (the vendored
    /// tungstenite's `release_idle_buffers`): tungstenite alone keeps both at the largest frame
    /// they have moved, which the same measurement sees, so it measures what it claims to.
    #[tokio::test]
    async fn an_idle_connection_holds_no_read_or_write_buffer() {
        let config = ws_config(1 << 20);
        // Kept first: it also pays for what the first frame sent makes once per thread (the
        // masking key generator).
        let kept = held_after_a_big_frame_each_way(config.release_idle_buffers(false)).await;
        let released = held_after_a_big_frame_each_way(config).await;
        assert!(kept >= 2 * 4096, "tungstenite's own buffers held {kept} B");
        assert!(
            released < 128,
            "an idle connection still holds {released} B"
        );
    }

    /// An SSE user takes two sockets (its stream and its publish connection); the budget
    /// never lends more than it has, and takes back what a permit held.
    #[tokio::test]
    async fn the_socket_budget_lends_sockets_in_twos_for_event_streams() {
        let budget = SocketBudget::new(3);
        let pair = budget.take(2).expect("two of three");
        assert!(budget.take(2).is_none(), "one left");
        let one = budget.take(1).expect("the last one");
        assert!(budget.take(1).is_none());
        drop(pair);
        assert!(budget.take(2).is_some(), "the pair came back");
        drop(one);
        let sse = test_context_with(
            "target: sse+http://127.0.0.1:1/\nscenario: idle\nheartbeat: {interval: 0s}",
        );
        assert_eq!(
            (context(10.0).sockets_per_user(), sse.sockets_per_user()),
            (1, 2)
        );
    }

    /// `n` users waiting to be admitted; each reports when it was (its id and the time).
    fn admissions(
        ctx: &Arc<Context>,
        desired: &watch::Sender<Desired>,
        n: u32,
    ) -> (
        Vec<Ticket>,
        tokio::sync::mpsc::UnboundedReceiver<(u32, Duration)>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let cancels = (0..n)
            .map(|id| {
                let mut user = User::new(id, Arc::clone(ctx), desired.subscribe());
                let cancel = user.ticket.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if user.admit().await {
                        let _ = tx.send((id, start.elapsed()));
                    }
                });
                cancel
            })
            .collect();
        (cancels, rx)
    }

    fn load() -> Load {
        crate::config::Config::embedded_default().load()
    }

    async fn admitted_within(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u32, Duration)>,
        span: Duration,
    ) -> Vec<(u32, Duration)> {
        let deadline = Instant::now() + span;
        let mut got = Vec::new();
        while let Ok(Some(admitted)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            got.push(admitted);
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn pausing_mid_ramp_stops_admissions_at_once_and_resuming_goes_on_at_the_rate() {
        let ctx = context(10.0);
        let (desired, _) = watch::channel(Desired::new(load()));
        let (_cancels, mut rx) = admissions(&ctx, &desired, 100);
        let before = admitted_within(&mut rx, Duration::from_millis(350)).await;
        assert_eq!(before.len(), 4, "0, 100, 200 and 300 ms: {before:?}");
        desired.send_modify(|d| d.paused = true);
        let paused = admitted_within(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(paused, [], "nobody connects while paused");
        desired.send_modify(|d| d.paused = false);
        let resumed = admitted_within(&mut rx, Duration::from_millis(250)).await;
        let times: Vec<_> = resumed.iter().map(|(_, at)| *at).collect();
        assert_eq!(
            times,
            [10_350, 10_450, 10_550].map(Duration::from_millis),
            "from the resume, at the rate, with no burst for the time paused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn saturation_and_a_drain_stop_admissions_cancelled_users_leave_at_once() {
        let ctx = context(10.0);
        let (desired, _) = watch::channel(Desired {
            saturated: true,
            ..Desired::new(load())
        });
        let (cancels, mut rx) = admissions(&ctx, &desired, 10);
        assert_eq!(admitted_within(&mut rx, Duration::from_secs(5)).await, []);
        desired.send_modify(|d| d.saturated = false);
        let first = admitted_within(&mut rx, Duration::from_millis(150)).await;
        assert_eq!(first.len(), 2, "{first:?}");
        // Ramp-down or shutdown: cancelled users give their place up and never connect.
        for cancel in &cancels[5..] {
            cancel.stop();
        }
        let mut rest: Vec<u32> = admitted_within(&mut rx, Duration::from_secs(5))
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        rest.sort();
        let expected: Vec<u32> = (0..5)
            .filter(|id| first.iter().all(|(f, _)| f != id))
            .collect();
        assert_eq!(rest, expected);
        let (_more, mut rx) = admissions(&ctx, &desired, 10);
        desired.send_modify(|d| d.draining = true);
        assert_eq!(admitted_within(&mut rx, Duration::from_secs(5)).await, []);
        assert_eq!(ctx.pacer.waiting(), 0, "a drain ends every waiter");
    }

    /// What a connected user holds that our code decides: its task's future (the task cell
    /// adds tokio's header, rounded to 128 bytes) and the box of its live connection (socket
    /// and conversation). The README's heap table has these lines; growing them shows here,
    /// not only in a benchmark.
    #[test]
    fn a_connected_users_state_stays_within_its_budget() {
        fn future_size<F>(_: fn(User) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = future_size(User::run);
        let live = std::mem::size_of::<talk::Live>();
        // tokio keeps a task in one cell, aligned to 128 bytes: header, scheduler, id and
        // trailer take 112 besides the future (and the task tracker's 8), so a future of 528
        // bytes or less makes a 640-byte cell, one more byte a 768-byte one.
        assert!(
            task <= 528,
            "a user's task future is {task} bytes (was 528): its cell grows by 128 bytes past 528"
        );
        // jemalloc's size classes here are 512, 640 and 768 bytes.
        assert!(
            live <= 640,
            "a live connection is {live} bytes (was 640): past 640 it takes 768"
        );
    }
}
