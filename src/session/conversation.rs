//! The life of one connection after login: heartbeat, the send schedule, and what each server
//! frame means (heartbeat reply, ack, room delivery), until the connection ends.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::WatchStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{self, Message};

use super::connect::{Socket, describe_close};
use super::{Context, User};
use crate::clock;
use crate::config::Schedule;
use crate::metrics::{Count, DisconnectReason, Latency};
use crate::scenario::reading::Meaning;
use crate::scenario::template::seq_of_msg_id;
use crate::scenario::tracking::{Delivery, Tracker};
use crate::scenario::{Identity, room_members, room_name, room_range};

/// How long a user waits for the server's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ended: the counted reason, and for failures what exactly happened.
pub struct Ended {
    pub reason: DisconnectReason,
    pub detail: Option<String>,
}

impl Ended {
    fn planned(reason: DisconnectReason) -> Ended {
        Ended {
            reason,
            detail: None,
        }
    }

    fn failed(reason: DisconnectReason, detail: impl Into<String>) -> Ended {
        Ended {
            reason,
            detail: Some(detail.into()),
        }
    }
}

/// Talks over one connection until it ends, settles its books, and says why it ended.
pub async fn run(user: &mut User, mut socket: Socket, identity: Identity) -> Ended {
    let mut talk = Conversation::new(user, identity);
    let ended = talk.run(user, &mut socket).await;
    talk.finish(user, ended.reason);
    ended
}

/// State of one connection; dropped when it ends.
struct Conversation {
    identity: Identity,
    timers: Timers,
    /// Messages awaiting their ack: sequence and scheduled send time, oldest first.
    pending: VecDeque<(u64, Instant)>,
    tracker: Tracker,
    ping_sent: Option<Instant>,
    /// This user's local id, and the room size it joined with.
    local: u32,
    room_size: u32,
    /// The users of this user's room when it joined (local ids): the senders it expects.
    members: std::ops::Range<u32>,
    /// The fleet is draining: nothing is sent, and the books are settled.
    draining: bool,
    /// This conversation's books were closed in [`Books`](crate::roster::Books).
    settled: bool,
}

impl Conversation {
    fn new(user: &User, identity: Identity) -> Conversation {
        let ctx = &user.ctx;
        let desired = user.desired.borrow();
        let tracks_deliveries = ctx
            .scenario
            .message
            .as_ref()
            .is_some_and(|m| m.delivery.is_some());
        let room_size = desired.load.room_size;
        // Local ids: a shard holds whole rooms, numbered room by room.
        let members = if tracks_deliveries {
            room_range(user.id, ctx.local_users(&desired.load), room_size)
        } else {
            0..0
        };
        let mut tracker = Tracker::new(ctx.loss_grace);
        // Joined: what the room's members send from now on is expected here.
        for (member, sent) in members.clone().zip(ctx.roster.sent(members.clone())) {
            if member != user.id {
                let id = ctx.scenario.user_id(ctx.global_id(member, room_size));
                tracker.expect_from(&id, sent);
            }
        }
        ctx.books.open();
        Conversation {
            identity,
            timers: Timers::start(
                ctx,
                sending_interval(ctx, &desired),
                desired.load.heartbeat_interval,
            ),
            pending: VecDeque::new(),
            tracker,
            ping_sent: None,
            local: user.id,
            room_size,
            members,
            draining: false,
            settled: false,
        }
    }

    async fn run(&mut self, user: &mut User, socket: &mut Socket) -> Ended {
        let ctx = std::sync::Arc::clone(&user.ctx);
        let metrics = &ctx.metrics;
        // Created once per connection, not per frame: re-creating them on every loop turn
        // re-registers a timer and takes the watch channel's lock, which every user shares.
        let cancelled = user.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        let mut changes = WatchStream::new(user.desired.clone());
        let sleep = sleep_until(self.timers.earliest());
        tokio::pin!(sleep);
        loop {
            let wake = self.timers.earliest();
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    close(socket).await;
                    return Ended::planned(DisconnectReason::ClientClose);
                }
                Some(desired) = changes.next() => {
                    let room_size = desired.load.room_size;
                    if room_name(ctx.global_id(user.id, room_size), room_size) != self.identity.room {
                        // Rooms were regrouped: rejoin as the server expects, by reconnecting.
                        close(socket).await;
                        return Ended::planned(DisconnectReason::RoomChange);
                    }
                    self.timers.set_message_interval(sending_interval(&ctx, &desired));
                    self.timers.set_heartbeat_interval(desired.load.heartbeat_interval);
                    if desired.draining && !self.draining {
                        self.start_drain(&ctx);
                    }
                }
                frame = socket.next() => {
                    let frame = match frame {
                        None => {
                            return Ended::failed(
                                DisconnectReason::Reset,
                                "the connection ended without a close frame",
                            );
                        }
                        Some(Err(err)) => return failure(&err),
                        Some(Ok(frame)) => frame,
                    };
                    match frame {
                        Message::Text(text) => {
                            metrics.add(Count::Received, 1);
                            metrics.add(Count::BytesReceived, text.len() as u64);
                            self.on_text(&ctx, &text);
                            self.check_settled(&ctx);
                        }
                        Message::Binary(data) => {
                            metrics.add(Count::Received, 1);
                            metrics.add(Count::BytesReceived, data.len() as u64);
                            metrics.add(Count::FramesUnmatched, 1);
                        }
                        Message::Pong(data) => self.on_pong(&ctx, &data),
                        Message::Close(frame) => {
                            return Ended::failed(
                                DisconnectReason::ServerClose,
                                format!(
                                    "the server closed the connection ({})",
                                    describe_close(frame.as_ref())
                                ),
                            );
                        }
                        Message::Ping(_) | Message::Frame(_) => {}
                    }
                }
                _ = &mut sleep => {
                    let now = Instant::now();
                    if self.timers.pong_deadline.is_some_and(|d| now >= d) {
                        return Ended::failed(
                            DisconnectReason::HeartbeatTimeout,
                            format!(
                                "no heartbeat reply within heartbeat.timeout ({})",
                                humantime::format_duration(ctx.heartbeat.timeout)
                            ),
                        );
                    }
                    if self.timers.churn_at.is_some_and(|d| now >= d) {
                        close(socket).await;
                        return Ended::planned(DisconnectReason::Churn);
                    }
                    if self.timers.ping_due(now, ctx.heartbeat.timeout)
                        && let Err(ended) = self.ping(&ctx, user, socket, now).await {
                            return ended;
                        }
                    if let Some(scheduled) = self.timers.send_due(now, ctx.schedule)
                        && let Err(ended) = self.send(&ctx, user, socket, scheduled).await {
                            return ended;
                        }
                    self.sweep(&ctx, now);
                }
            }
        }
    }

    /// The run is ending: sending has stopped everywhere. Expect every room member's messages
    /// up to its last one, and settle as soon as nothing is outstanding.
    fn start_drain(&mut self, ctx: &Context) {
        self.draining = true;
        self.announce_final_sequences(ctx, Instant::now());
        self.schedule_settling(ctx);
        self.check_settled(ctx);
    }

    fn announce_final_sequences(&mut self, ctx: &Context, now: Instant) {
        let members = self.members.clone();
        for (member, sent) in members.clone().zip(ctx.roster.sent(members)) {
            if member != self.local {
                let id = ctx.scenario.user_id(ctx.global_id(member, self.room_size));
                self.tracker.expect_until(&id, sent, now);
            }
        }
    }

    /// While draining, wake exactly when the next ack times out or gap expires.
    fn schedule_settling(&mut self, ctx: &Context) {
        let ack = self
            .pending
            .front()
            .map(|&(_, scheduled)| clock::later(scheduled, ctx.ack_timeout));
        if let Some(next) = ack.into_iter().chain(self.tracker.next_expiry()).min() {
            self.timers.next_sweep = next;
        }
    }

    /// Closes this conversation's books once nothing it awaits is outstanding (draining only).
    fn check_settled(&mut self, ctx: &Context) {
        if self.draining && !self.settled && self.pending.is_empty() && self.tracker.is_settled() {
            self.settled = true;
            ctx.books.close();
        }
    }

    async fn ping(
        &mut self,
        ctx: &Context,
        user: &User,
        socket: &mut Socket,
        now: Instant,
    ) -> Result<(), Ended> {
        let stamp = clock::micros_at(now.into_std());
        let frame = match &ctx.scenario.heartbeat {
            Some(app) => {
                let payload_size = user.desired.borrow().load.payload_size;
                let values = self
                    .identity
                    .values(ctx.target.as_str(), 0, stamp, payload_size);
                Message::text(app.send.render(&values))
            }
            None => Message::Ping(stamp.to_be_bytes().to_vec().into()),
        };
        self.ping_sent.get_or_insert(now);
        write(ctx, socket, frame).await
    }

    async fn send(
        &mut self,
        ctx: &Context,
        user: &mut User,
        socket: &mut Socket,
        scheduled: Instant,
    ) -> Result<(), Ended> {
        let Some(plan) = &ctx.scenario.message else {
            return Ok(());
        };
        let seq = user.slot.next_seq();
        let ts = clock::micros_at(scheduled.into_std());
        // One read of the shared desired state per message.
        let (payload_size, users, room_size) = {
            let desired = user.desired.borrow();
            (
                desired.load.payload_size,
                ctx.local_users(&desired.load),
                desired.load.room_size,
            )
        };
        let text = plan.send.render(&self.identity.values(
            ctx.target.as_str(),
            seq,
            ts,
            payload_size,
        ));
        let size = text.len() as u64;
        write(ctx, socket, Message::text(text)).await?;
        user.slot.mark_sent(seq);
        let metrics = &ctx.metrics;
        metrics.add(Count::Sent, 1);
        metrics.add(Count::BytesSent, size);
        metrics.observe(
            Latency::SendLag,
            Instant::now().saturating_duration_since(scheduled),
        );
        if plan.ack.is_some() {
            self.pending.push_back((seq, scheduled));
        }
        if plan.delivery.is_some() {
            let others = room_members(user.id, users, room_size).saturating_sub(1);
            metrics.add(Count::DeliveriesExpected, u64::from(others));
        }
        Ok(())
    }

    fn on_pong(&mut self, ctx: &Context, data: &[u8]) {
        // Unsolicited pongs are allowed (RFC 6455 5.5.3); only ours carry an 8-byte stamp.
        if ctx.scenario.heartbeat.is_none() && data.len() == 8 {
            self.heartbeat_answered(ctx);
        }
    }

    fn heartbeat_answered(&mut self, ctx: &Context) {
        if let Some(sent) = self.ping_sent.take() {
            ctx.metrics.observe(Latency::Heartbeat, sent.elapsed());
        }
        self.timers.pong_deadline = None;
    }

    /// Classifies a text frame — heartbeat reply, ack of our message, room delivery, or
    /// other — from one walk of it.
    fn on_text(&mut self, ctx: &Context, text: &str) {
        let metrics = &ctx.metrics;
        match ctx.scenario.reading.read(text) {
            Meaning::HeartbeatReply => self.heartbeat_answered(ctx),
            Meaning::Ack { id: Some(id) } => self.on_ack(ctx, &id),
            Meaning::Delivery {
                sender: Some(sender),
                seq: Some(seq),
                ts: Some(ts),
            } => self.on_delivery(ctx, &sender, seq, ts),
            Meaning::Ack { .. } | Meaning::Delivery { .. } => metrics.add(Count::FramesInvalid, 1),
            Meaning::Other => metrics.add(Count::FramesUnmatched, 1),
        }
    }

    fn on_ack(&mut self, ctx: &Context, id: &str) {
        let Some(seq) = seq_of_msg_id(id, &self.identity.user_id) else {
            // Someone else's id: servers that fan acks out to the room are not our concern.
            ctx.metrics.add(Count::FramesUnmatched, 1);
            return;
        };
        // Acks come mostly in order, so the match is nearly always at the front.
        if let Some(at) = self.pending.iter().position(|&(s, _)| s == seq)
            && let Some((_, scheduled)) = self.pending.remove(at)
        {
            ctx.metrics.observe(Latency::Rtt, scheduled.elapsed());
        }
    }

    fn on_delivery(&mut self, ctx: &Context, sender: &str, seq: u64, ts: u64) {
        let metrics = &ctx.metrics;
        if sender == self.identity.user_id {
            return; // the server echoed our own message to us; not a delivery
        }
        metrics.observe(Latency::Delivery, clock::since_micros(ts));
        match self.tracker.observe(sender, seq, Instant::now()) {
            Delivery::New => metrics.add(Count::DeliveriesReceived, 1),
            Delivery::Reordered => {
                metrics.add(Count::DeliveriesReceived, 1);
                metrics.add(Count::Reordered, 1);
            }
            Delivery::Duplicate => metrics.add(Count::Duplicated, 1),
            Delivery::Untracked => {}
        }
        metrics.add(Count::Lost, self.tracker.take_lost());
    }

    /// Expires acks past their timeout and delivery gaps past their grace period.
    fn sweep(&mut self, ctx: &Context, now: Instant) {
        // The fallback wake-up is one period after the last sweep: were it left in the past,
        // a quiet connection (heartbeat and messages rarer than the period) would spin.
        self.timers.postpone_sweep(now);
        while let Some(&(_, scheduled)) = self.pending.front() {
            if now.duration_since(scheduled) < ctx.ack_timeout {
                break;
            }
            self.pending.pop_front();
            ctx.metrics.add(Count::AckTimeouts, 1);
        }
        self.tracker.expire(now);
        ctx.metrics.add(Count::Lost, self.tracker.take_lost());
        if self.draining {
            self.schedule_settling(ctx);
            self.check_settled(ctx);
        }
    }

    /// Settles the books when the connection ends: open delivery gaps are lost; messages the
    /// server will now never ack are timeouts unless we chose to leave mid-run (ramp-down,
    /// churn, room change). At the end of a drain everything still awaited counts: the
    /// senders' final sequences are read once more (every sender has stopped by now), so a
    /// dropped last message is lost, and unanswered acks are timeouts.
    fn finish(&mut self, user: &User, reason: DisconnectReason) {
        let ctx = &user.ctx;
        let drained = user.desired.borrow().draining;
        if drained {
            self.announce_final_sequences(ctx, Instant::now());
        }
        self.tracker.finish();
        ctx.metrics.add(Count::Lost, self.tracker.take_lost());
        let left_by_choice = matches!(
            reason,
            DisconnectReason::ClientClose | DisconnectReason::Churn | DisconnectReason::RoomChange
        );
        if drained || !left_by_choice {
            ctx.metrics
                .add(Count::AckTimeouts, self.pending.len() as u64);
        }
        self.pending.clear();
        if !self.settled {
            self.settled = true;
            ctx.books.close();
        }
    }
}

/// The deadlines of one connection; the user sleeps until the earliest of them.
struct Timers {
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_send: Option<Instant>,
    /// Fallback wake-up for expiring acks and gaps when no send or ping comes soon.
    next_sweep: Instant,
    sweep_every: Duration,
    churn_at: Option<Instant>,
    message_interval: Duration,
    heartbeat_interval: Duration,
}

/// Messages go out only with a message flow in the scenario, while not paused or draining.
fn sending_interval(ctx: &Context, desired: &crate::load::Desired) -> Duration {
    if !desired.may_send() || ctx.scenario.message.is_none() {
        Duration::ZERO
    } else {
        desired.load.message_interval
    }
}

/// A random point within the first period, so a fleet that connected together does not tick
/// together; `None` for a zero period (off).
fn random_phase(now: Instant, period: Duration) -> Option<Instant> {
    (!period.is_zero()).then(|| clock::later(now, period.mul_f64(rand::rng().random::<f64>())))
}

impl Timers {
    /// First ping and first send at a random phase.
    fn start(ctx: &Context, message_interval: Duration, heartbeat_interval: Duration) -> Timers {
        let now = Instant::now();
        let sweep_every = ctx.ack_timeout.max(ctx.loss_grace);
        Timers {
            next_ping: random_phase(now, heartbeat_interval),
            pong_deadline: None,
            next_send: random_phase(now, message_interval),
            next_sweep: clock::later(now, sweep_every),
            sweep_every,
            churn_at: ctx.lifetime.as_ref().map(|l| {
                let spread = l.max.saturating_sub(l.min);
                clock::later(now, l.min + spread.mul_f64(rand::rng().random::<f64>()))
            }),
            message_interval,
            heartbeat_interval,
        }
    }

    fn earliest(&self) -> Instant {
        [
            self.next_ping,
            self.pong_deadline,
            self.next_send,
            self.churn_at,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_sweep, Instant::min)
    }

    /// Whether a heartbeat is due; if so, schedules the next and arms the reply deadline.
    fn ping_due(&mut self, now: Instant, reply_timeout: Duration) -> bool {
        let Some(due) = self.next_ping.filter(|&t| now >= t) else {
            return false;
        };
        self.next_ping = Some(clock::later(due, self.heartbeat_interval));
        // One outstanding ping at a time: its deadline is what a missed reply is judged by.
        self.pong_deadline
            .get_or_insert(clock::later(now, reply_timeout));
        true
    }

    /// If a message is due, returns its *scheduled* time and schedules the next one. The
    /// schedule never slips: a late user sends its backlog back to back, each message stamped
    /// with the time it should have left (no coordinated omission).
    fn send_due(&mut self, now: Instant, schedule: Schedule) -> Option<Instant> {
        let due = self.next_send.filter(|&t| now >= t)?;
        let gap = match schedule {
            Schedule::Fixed => self.message_interval,
            // Exponential gaps with the interval as mean: Poisson arrivals.
            Schedule::Poisson => self
                .message_interval
                .mul_f64(-(1.0 - rand::rng().random::<f64>()).ln()),
        };
        self.next_send = Some(clock::later(due, gap));
        Some(due)
    }

    /// Every wake-up sweeps ([`Conversation::sweep`]), so the fallback only fires on quiet
    /// connections.
    fn postpone_sweep(&mut self, now: Instant) {
        self.next_sweep = clock::later(now, self.sweep_every);
    }

    /// A new message interval (0 stops sending). Resuming starts a fresh schedule: the time
    /// spent paused is not a backlog to catch up on.
    fn set_message_interval(&mut self, interval: Duration) {
        if interval != self.message_interval {
            self.message_interval = interval;
            self.next_send = reschedule(self.next_send, interval);
        }
    }

    fn set_heartbeat_interval(&mut self, interval: Duration) {
        if interval != self.heartbeat_interval {
            self.heartbeat_interval = interval;
            self.next_ping = reschedule(self.next_ping, interval);
            if interval.is_zero() {
                self.pong_deadline = None;
            }
        }
    }
}

/// The next tick of a periodic timer whose period changed: no later than one new period from
/// now, at a random phase if it was off.
fn reschedule(next: Option<Instant>, period: Duration) -> Option<Instant> {
    let now = Instant::now();
    if period.is_zero() {
        return None;
    }
    match next {
        Some(next) => Some(next.min(clock::later(now, period))),
        None => random_phase(now, period),
    }
}

async fn write(ctx: &Context, socket: &mut Socket, frame: Message) -> Result<(), Ended> {
    match timeout(ctx.write_timeout, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(failure(&err)),
        Err(_) => Err(Ended::failed(
            DisconnectReason::SendTimeout,
            format!(
                "a frame could not be written within {} (the server stopped reading)",
                humantime::format_duration(ctx.write_timeout)
            ),
        )),
    }
}

/// Sends a close frame and waits (bounded) for the server to answer it.
pub async fn close(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        if socket.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
}

fn failure(err: &tungstenite::Error) -> Ended {
    let reason = match err {
        tungstenite::Error::Io(_)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed => DisconnectReason::Reset,
        _ => DisconnectReason::Protocol,
    };
    Ended::failed(reason, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(message_interval: Duration, next_send: Option<Instant>) -> Timers {
        let now = Instant::now();
        Timers {
            next_ping: None,
            pong_deadline: None,
            next_send,
            next_sweep: now + Duration::from_secs(60),
            sweep_every: Duration::from_secs(60),
            churn_at: None,
            message_interval,
            heartbeat_interval: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_user_keeps_the_schedule() {
        let first = Instant::now();
        let mut t = timers(Duration::from_millis(100), Some(first));
        // Wake up 350 ms late: four messages are due, each stamped with its own slot.
        let now = first + Duration::from_millis(350);
        let sent: Vec<_> = std::iter::from_fn(|| t.send_due(now, Schedule::Fixed)).collect();
        let expected: Vec<_> = (0..4)
            .map(|i| first + Duration::from_millis(100 * i))
            .collect();
        assert_eq!(sent, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn poisson_gaps_average_the_interval() {
        let start = Instant::now();
        let mut t = timers(Duration::from_millis(100), Some(start));
        let far = start + Duration::from_secs(100_000);
        let n = 20_000;
        let mut last = start;
        for _ in 0..n {
            last = t.send_due(far, Schedule::Poisson).expect("due");
        }
        let mean = (last - start).as_secs_f64() / f64::from(n - 1);
        assert!((mean - 0.1).abs() < 0.005, "mean gap {mean}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_reply_keeps_the_first_deadline() {
        let timeout = Duration::from_millis(500);
        let first = Instant::now();
        let mut t = timers(Duration::ZERO, None);
        t.next_ping = Some(first);
        assert!(t.ping_due(first, timeout));
        assert_eq!(t.pong_deadline, Some(first + Duration::from_millis(500)));
        let second = first + Duration::from_secs(1);
        assert!(t.ping_due(second, timeout));
        assert_eq!(t.pong_deadline, Some(first + Duration::from_millis(500)));
        assert_eq!(t.earliest(), first + Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_sweeps_once_per_period_not_in_a_loop() {
        let ctx = super::super::test_context(100.0);
        let load = crate::load::Load {
            message_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            ..crate::config::Config::embedded_default().load()
        };
        let (desired, _) = tokio::sync::watch::channel(crate::load::Desired::new(load));
        let user = User::new(
            0,
            std::sync::Arc::clone(&ctx),
            desired.subscribe(),
            tokio_util::sync::CancellationToken::new(),
        );
        let mut talk = Conversation::new(&user, ctx.scenario.identity(0, 10));
        // Heartbeat and messages far off: only the sweep fallback wakes this connection.
        talk.timers.next_ping = Some(Instant::now() + Duration::from_secs(600));
        talk.timers.next_send = None;
        tokio::time::advance(talk.timers.sweep_every).await;
        let now = Instant::now();
        assert_eq!(talk.timers.earliest(), now, "the fallback is due");
        talk.sweep(&ctx, now);
        assert_eq!(
            talk.timers.earliest(),
            now + talk.timers.sweep_every,
            "one period later, not again at once"
        );
        talk.finish(&user, DisconnectReason::ClientClose);
    }

    #[tokio::test(start_paused = true)]
    async fn changing_the_interval_reschedules_sending() {
        let mut t = timers(Duration::ZERO, None);
        t.set_message_interval(Duration::from_millis(100));
        let next = t.next_send.expect("sending starts");
        assert!(next <= Instant::now() + Duration::from_millis(100));
        t.set_message_interval(Duration::ZERO);
        assert_eq!(t.next_send, None, "0 stops sending");
    }
}
