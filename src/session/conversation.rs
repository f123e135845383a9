//! The life of one connection after login, as a plain state machine: server frames, ticks and
//! changes of the desired load go in; frames to send, the next deadline and how the
//! connection ended come out. It owns the heartbeat and send schedule, pending acks, delivery
//! tracking, churn and the drain's books — and no socket: the driver in
//! [`talk`](super::talk) does the I/O, and the tests here run on tokio's paused clock alone.

use std::collections::VecDeque;
use std::sync::Arc;

use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Kept;
use super::settings::Schedule;
use super::wire::describe_close;
use super::{Context, User};
use crate::clock::{self, Span, Tick};
use crate::load::Desired;
use crate::metrics::{Count, DisconnectReason, Latency};
use crate::roster::Slot;
use crate::scenario::Identity;
use crate::scenario::reading::{Acked, Meaning};
use crate::scenario::template::seq_of_msg_id;
use crate::scenario::tracking::{Delivery, Tracker};
use crate::topology::Topology;

/// Most messages one tick hands out: a backlog goes out in batches, with reads between them.
const MAX_SENDS_PER_TICK: u32 = 64;

/// How a connection ended: the counted reason, and for failures what exactly happened.
#[derive(Debug, PartialEq)]
pub struct Ended {
    pub reason: DisconnectReason,
    pub detail: Option<String>,
    /// A silent user's time still away when the server ended its connection; a handed
    /// over user's gap.
    pub away: Option<Duration>,
}

impl Ended {
    pub fn planned(reason: DisconnectReason) -> Ended {
        Ended {
            reason,
            detail: None,
            away: None,
        }
    }

    pub fn failed(reason: DisconnectReason, detail: impl Into<String>) -> Ended {
        Ended {
            reason,
            detail: Some(detail.into()),
            away: None,
        }
    }

    /// Whether we chose to end it (and so owe the server a close frame).
    pub fn is_planned(&self) -> bool {
        self.detail.is_none()
    }
}

/// A frame the driver must write.
#[derive(Debug, PartialEq)]
pub enum Outbound {
    /// The answer to a server frame (the scenario's `replies`), written before anything else.
    Reply(Message),
    /// A heartbeat: a WebSocket ping or the scenario's app frame.
    Heartbeat(Message),
    /// Fresh tokens (the scenario's `refresh`).
    Refresh(Message),
    /// A scheduled message; once written, report it with [`Conversation::sent`]. `resent`:
    /// the same message again, unacknowledged before a reconnect (`resend_unacked`).
    Message {
        frame: Message,
        seq: u64,
        scheduled: Instant,
        resent: bool,
    },
}

/// The part of the desired load a connection uses, copied when it changes (so sending reads
/// no shared state).
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Bytes of padding per message (at most 1 MiB: `config`'s limit).
    payload_size: u32,
    /// This instance's users, for the size of this user's rooms.
    local_users: u32,
}

/// What the last tick made due and has not been handed out yet.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// The tick's time (what is due is stamped with it).
    at: Tick,
    heartbeat: bool,
    refresh: bool,
    sends_left: u32,
}

impl Due {
    fn at(&self) -> Instant {
        self.at.get().unwrap_or_else(Instant::now)
    }
}

/// What few scenarios use, in one box made only for a connection that uses any of it (the
/// others pay a pointer).
#[derive(Debug, Default)]
struct Rare {
    /// Messages of the last connection never acknowledged, to send again (newest first; empty
    /// unless `resend_unacked`).
    resend: Vec<(u64, Instant)>,
    /// The user's own values its matchers compare with.
    mine: Box<[String]>,
    refreshing: Option<Refreshing>,
}

/// When a connection sends fresh tokens next, and when the last refresh's answer is due.
#[derive(Debug)]
struct Refreshing {
    next: Instant,
    answer_by: Option<Instant>,
}

/// State of one connection; dropped when it ends.
pub struct Conversation {
    ctx: Arc<Context>,
    slot: Arc<Slot>,
    identity: Identity,
    timers: Timers,
    due: Due,
    share: Share,
    /// Messages awaiting their ack: sequence and scheduled send time, oldest first.
    pending: VecDeque<(u64, Instant)>,
    tracker: Tracker,
    /// When the heartbeat awaiting its reply was sent.
    ping_sent: Tick,
    rare: Option<Box<Rare>>,
    /// The answer to the last frame, if a reply rule matched it (the driver writes it before
    /// reading again, so one is enough).
    reply: Option<String>,
    /// This user's local id, and the live room size it joined with (its rooms are
    /// [`Conversation::topology`]).
    local: u32,
    room_size: u32,
    /// Its rooms' members are expected from among the first this many users (local ids):
    /// this instance's users when it joined, or since; 0 when deliveries are not tracked.
    expected_among: u32,
    /// The fleet is draining: nothing is sent, and the books are settled.
    draining: bool,
    /// This conversation's books were closed in [`Books`](crate::roster::Books).
    settled: bool,
    /// The last sync storm this connection knew of (it takes part only in later ones).
    storm: u32,
}

impl Conversation {
    /// A connection of `user`, just logged in as `identity`: its room's members are expected
    /// from now on. `unacked`: what the previous connection left unacknowledged, oldest first,
    /// sent again first.
    pub fn new(user: &User, identity: Identity, mut unacked: Vec<(u64, Instant)>) -> Conversation {
        let ctx = Arc::clone(&user.ctx);
        let desired = user.desired.borrow().clone();
        let tracks_deliveries = ctx
            .scenario
            .message
            .as_ref()
            .is_some_and(|m| m.delivery.is_some());
        let share = Share::of(&ctx, &desired);
        let topology = ctx.topology(&desired.load);
        // Local ids: a shard holds whole blocks of rooms, numbered block by block.
        let expected_among = if tracks_deliveries {
            share.local_users
        } else {
            0
        };
        // Opened before kept books are taken back (which closes them), so the drain never
        // sees every book closed while a user is only coming back.
        ctx.books.open();
        // Back from time away with its books kept: what it missed is expected now.
        let kept = ctx.take_books(user.id);
        let returning = kept.is_some();
        let mut tracker = kept.unwrap_or_default();
        expect_members(&ctx, &mut tracker, user.id, topology, 0..expected_among);
        if returning {
            tracker.back(Instant::now());
            count_books(&ctx, &mut tracker);
        }
        let mine = ctx.scenario.mine_of(&identity);
        let mut talk = Conversation {
            timers: Timers::start(
                &ctx,
                sending_interval(&ctx, &desired, identity.user),
                desired.load.heartbeat_interval,
            ),
            slot: Arc::clone(user.slot()),
            identity,
            due: Due {
                at: Tick::at(Instant::now()),
                heartbeat: false,
                refresh: false,
                sends_left: 0,
            },
            rare: {
                unacked.reverse();
                let rare = Rare {
                    resend: unacked,
                    mine,
                    refreshing: ctx.scenario.refresh.as_ref().map(|r| Refreshing {
                        next: clock::later(Instant::now(), r.every),
                        answer_by: None,
                    }),
                };
                let used =
                    !rare.resend.is_empty() || !rare.mine.is_empty() || rare.refreshing.is_some();
                used.then(|| Box::new(rare))
            },
            share,
            pending: VecDeque::new(),
            tracker,
            ping_sent: Tick::NONE,
            reply: None,
            local: user.id,
            room_size: desired.load.room_size,
            expected_among,
            draining: false,
            settled: false,
            storm: desired.disruption.map_or(0, |d| d.epoch),
            ctx,
        };
        if desired.draining {
            talk.start_drain();
        }
        talk
    }

    /// How this user's rooms are laid out (as when it joined, or since).
    fn topology(&self) -> Topology {
        self.ctx.scenario.topology(self.room_size)
    }

    /// Whether a message left unacknowledged by the last connection is to be written now.
    fn resends_now(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| !r.resend.is_empty())
            && !self.draining
            && self.timers.quiet_until().is_none()
    }

    /// The user's own values its matchers compare with (usually none).
    fn mine(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |r| &r.mine)
    }

    fn refreshing(&self) -> Option<&Refreshing> {
        self.rare.as_ref()?.refreshing.as_ref()
    }

    fn refreshing_mut(&mut self) -> Option<&mut Refreshing> {
        self.rare.as_mut()?.refreshing.as_mut()
    }

    /// When [`Conversation::on_tick`] is due next (at once while there is something to send
    /// again and it may be sent: not while draining or silent, which would spin).
    pub fn deadline(&self) -> Instant {
        if self.resends_now() {
            return Instant::now();
        }
        let earliest = self.timers.earliest();
        match self.refreshing() {
            Some(r) => [Some(r.next), r.answer_by]
                .into_iter()
                .flatten()
                .fold(earliest, Instant::min),
            None => earliest,
        }
    }

    /// The desired load changed. A user whose rooms changed must rejoin: it ends (planned).
    pub fn on_desired(&mut self, desired: &Desired) -> Result<(), Ended> {
        let ctx = Arc::clone(&self.ctx);
        let topology = ctx.topology(&desired.load);
        self.share = Share::of(&ctx, desired);
        if topology != self.topology() {
            let me = ctx.global_id(self.local, topology);
            let rooms = ctx.scenario.rooms_of(me, topology);
            if !rooms.iter().map(String::as_str).eq(self.identity.rooms()) {
                return Err(Ended::planned(DisconnectReason::RoomChange));
            }
            // Same rooms, cut differently (bigger rooms): the new room-mates are expected.
            self.room_size = desired.load.room_size;
            let among = 0..self.expected_among;
            expect_members(&ctx, &mut self.tracker, self.local, topology, among);
        }
        // More users: the rooms of the last block may have grown. Their new members are
        // expected from now.
        if self.expected_among > 0 && self.share.local_users > self.expected_among {
            let added = self.expected_among..self.share.local_users;
            let topology = self.topology();
            expect_members(&ctx, &mut self.tracker, self.local, topology, added);
            self.expected_among = self.share.local_users;
        }
        self.timers
            .set_message_interval(sending_interval(&ctx, desired, self.identity.user));
        self.timers
            .set_heartbeat_interval(desired.load.heartbeat_interval);
        if desired.draining && !self.draining {
            self.start_drain();
        }
        if let Some(storm) = desired.disruption.filter(|d| d.epoch != self.storm) {
            self.storm = storm.epoch;
            if !self.draining && storm.chooses(self.identity.user) {
                return Err(Ended {
                    reason: DisconnectReason::Offline,
                    detail: None,
                    away: Some(storm.away_for(self.identity.user)),
                });
            }
        }
        Ok(())
    }

    /// A frame from the server.
    pub fn on_frame(&mut self, frame: &Message) -> Result<(), Ended> {
        // No clone of the shared context per frame: its refcount is a cache line every user
        // thread shares.
        match frame {
            Message::Text(text) => self.on_data(text.as_bytes()),
            Message::Binary(data) => self.on_data(data),
            Message::Pong(data) => self.on_pong(data),
            Message::Close(frame) => {
                return Err(Ended::failed(
                    DisconnectReason::ServerClose,
                    format!(
                        "the server closed the connection ({})",
                        describe_close(frame.as_ref())
                    ),
                ));
            }
            Message::Ping(_) | Message::Frame(_) => {}
        }
        Ok(())
    }

    /// Time has come (see [`Conversation::deadline`]): ends the connection on a missed
    /// heartbeat or at its churn time, expires acks and gaps, and makes what is due to be sent
    /// available from [`Conversation::next_outbound`].
    pub fn on_tick(&mut self, now: Instant) -> Result<(), Ended> {
        if let Some(until) = self.timers.quiet_until() {
            if now < until {
                self.sweep(now);
                return Ok(());
            }
            // Back before the server noticed: the same connection speaks again.
            self.timers.speak_again(&self.ctx, now);
        }
        let reply_timeout = self.ctx.settings.heartbeat.timeout;
        if self.timers.pong_deadline.get().is_some_and(|d| now >= d) {
            return Err(Ended::failed(
                DisconnectReason::HeartbeatTimeout,
                format!(
                    "no heartbeat reply within heartbeat.timeout ({})",
                    humantime::format_duration(reply_timeout)
                ),
            ));
        }
        if self.timers.churn_at().is_some_and(|d| now >= d) {
            return Err(Ended::planned(DisconnectReason::Churn));
        }
        if !self.draining && self.timers.offline_at().is_some_and(|d| now >= d) {
            let silent = self
                .ctx
                .settings
                .offline
                .filter(|o| o.how == crate::session::settings::Away::Silent);
            let Some(offline) = silent else {
                return Err(Ended::planned(DisconnectReason::Offline));
            };
            let away = offline.away.sample(&mut rand::rng());
            self.timers.go_quiet(clock::later(now, away));
            self.reply = None;
            self.sweep(now);
            return Ok(());
        }
        self.sweep(now);
        self.due = Due {
            at: Tick::at(now),
            heartbeat: self.timers.ping_due(now, reply_timeout),
            refresh: self.refresh_due(now),
            sends_left: MAX_SENDS_PER_TICK,
        };
        Ok(())
    }

    /// Whether fresh tokens are due; counts a refresh whose answer never came.
    fn refresh_due(&mut self, now: Instant) -> bool {
        // Fields apart (not `refreshing_mut`), so the context is read alongside.
        let (Some(refreshing), Some(refresh)) = (
            self.rare.as_mut().and_then(|r| r.refreshing.as_mut()),
            &self.ctx.scenario.refresh,
        ) else {
            return false;
        };
        if refreshing.answer_by.is_some_and(|by| now >= by) {
            refreshing.answer_by = None;
            self.ctx.meter().add(Count::TokenRefreshFailures, 1);
        }
        if now < refreshing.next {
            return false;
        }
        refreshing.next = clock::later(now, refresh.every);
        true
    }

    /// How a connection that ended while its user was silent counts: the server's timeout
    /// of a user that chose to go quiet is its going offline, for the rest of its time away.
    pub fn while_silent(&self, ended: Ended) -> Ended {
        match self.timers.quiet_until() {
            Some(until) if ended.reason.is_failure() => Ended {
                reason: DisconnectReason::Offline,
                detail: None,
                away: Some(until.saturating_duration_since(Instant::now())),
            },
            _ => ended,
        }
    }

    /// The next frame due, if any: a reply to the last frame first, then the heartbeat the
    /// last tick made due, then its messages in schedule order. Handed out one at a time, so a
    /// connection keeps no buffer of them. A frame the codec cannot encode ends the
    /// connection (the scenario's templates were checked at start, so this is rare).
    pub fn next_outbound(&mut self) -> Result<Option<Outbound>, Ended> {
        if self.timers.quiet_until().is_some() {
            self.reply = None;
            return Ok(None);
        }
        if let Some(reply) = self.reply.take() {
            return self.encode(reply).map(|frame| Some(Outbound::Reply(frame)));
        }
        if self.resends_now()
            && let Some((seq, scheduled)) = self.rare.as_mut().and_then(|r| r.resend.pop())
        {
            return self.render_message(seq, scheduled, true);
        }
        if std::mem::take(&mut self.due.heartbeat) {
            return self
                .heartbeat(self.due.at())
                .map(|frame| Some(Outbound::Heartbeat(frame)));
        }
        if std::mem::take(&mut self.due.refresh) {
            return self
                .refresh(self.due.at())
                .map(|frame| frame.map(Outbound::Refresh));
        }
        while self.due.sends_left > 0 {
            self.due.sends_left -= 1;
            let Some(scheduled) = self.timers.send_due(
                self.due.at(),
                &self.ctx.settings.schedule,
                self.identity.user,
                self.ctx.epoch,
            ) else {
                break;
            };
            if let Some(message) = self.message(scheduled)? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    fn encode(&self, text: String) -> Result<Message, Ended> {
        self.ctx.scenario.codec.encode(text).map_err(|err| {
            Ended::failed(
                DisconnectReason::Protocol,
                format!("a frame could not be encoded: {err}"),
            )
        })
    }

    /// Message `seq`, scheduled for `scheduled`, left through the socket (`resent`: again,
    /// after a reconnect — counted as resent, not as another message).
    pub fn sent(&mut self, seq: u64, scheduled: Instant, size: usize, resent: bool) {
        let Some(plan) = &self.ctx.scenario.message else {
            return;
        };
        let metrics = self.ctx.meter();
        metrics.add(Count::BytesSent, size as u64);
        if plan.ack.is_some() {
            // Room for one to start with (a `VecDeque` would take four): most users wait for
            // one ack at a time; more double it as usual.
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(1);
            }
            self.pending.push_back((seq, scheduled));
        }
        if resent {
            metrics.add(Count::Resent, 1);
            return;
        }
        self.slot.mark_sent(seq);
        metrics.add(Count::Sent, 1);
        metrics.observe(
            Latency::SendLag,
            Instant::now().saturating_duration_since(scheduled),
        );
        if plan.delivery.is_some() {
            let (topology, users) = (self.topology(), self.share.local_users);
            let layer = topology.layer_of(seq);
            let others = if self.ctx.settings.arrivals.is_some() {
                // Users of open arrivals come and go: the members here now are expected.
                let room = topology.members(self.local, layer, 0..users);
                self.ctx.roster.connected_among(room).saturating_sub(1) as u64
            } else {
                u64::from(
                    topology
                        .room_members(self.local, layer, users)
                        .saturating_sub(1),
                )
            };
            metrics.add(Count::DeliveriesExpected, others);
        }
    }

    /// The refresh frame, with tokens minted afresh; its answer is awaited from now.
    fn refresh(&mut self, now: Instant) -> Result<Option<Message>, Ended> {
        let ctx = Arc::clone(&self.ctx);
        let Some(refresh) = &ctx.scenario.refresh else {
            return Ok(None);
        };
        ctx.scenario.mint_tokens(&mut self.identity);
        if let (Some(refreshing), true) = (self.refreshing_mut(), refresh.expect.is_some()) {
            refreshing
                .answer_by
                .get_or_insert(clock::later(now, refresh.timeout));
        }
        let values = self.identity.values(
            ctx.target.as_str(),
            0,
            clock::micros_at(now.into_std()),
            self.share.payload_size(),
        );
        self.encode(refresh.send.render(&values)).map(Some)
    }

    fn heartbeat(&mut self, now: Instant) -> Result<Message, Ended> {
        let ctx = &self.ctx;
        let stamp = clock::micros_at(now.into_std());
        if self.ping_sent == Tick::NONE {
            self.ping_sent = Tick::at(now);
        }
        match &ctx.scenario.heartbeat {
            Some(app) => {
                let values =
                    self.identity
                        .values(ctx.target.as_str(), 0, stamp, self.share.payload_size());
                self.encode(app.send.render(&values))
            }
            None => Ok(Message::Ping(stamp.to_be_bytes().to_vec().into())),
        }
    }

    /// The message scheduled for `scheduled`, with the next sequence number; none without a
    /// message flow in the scenario.
    fn message(&mut self, scheduled: Instant) -> Result<Option<Outbound>, Ended> {
        if self.ctx.scenario.message.is_none() {
            return Ok(None);
        }
        let seq = self.slot.next_seq();
        self.render_message(seq, scheduled, false)
    }

    /// Message `seq` as scheduled for `scheduled` (the same frame each time: same id, same
    /// timestamp).
    fn render_message(
        &self,
        seq: u64,
        scheduled: Instant,
        resent: bool,
    ) -> Result<Option<Outbound>, Ended> {
        let ctx = &self.ctx;
        let Some(plan) = ctx.scenario.message.as_ref() else {
            return Ok(None);
        };
        let ts = clock::micros_at(scheduled.into_std());
        let room = self.identity.room(self.topology().layer_of(seq) as usize);
        let text = plan.send.render(
            &self
                .identity
                .values(ctx.target.as_str(), seq, ts, self.share.payload_size())
                .in_room(room),
        );
        Ok(Some(Outbound::Message {
            frame: self.encode(text)?,
            seq,
            scheduled,
            resent,
        }))
    }

    /// The run is ending: sending has stopped everywhere. Expect every room member's messages
    /// up to its last one, and settle as soon as nothing is outstanding.
    fn start_drain(&mut self) {
        self.draining = true;
        self.announce_final_sequences(Instant::now());
        self.schedule_settling();
        self.check_settled();
    }

    fn announce_final_sequences(&mut self, now: Instant) {
        let (ctx, topology) = (&self.ctx, self.topology());
        for layer in 0..topology.rooms_per_user() {
            for member in topology.members(self.local, layer, 0..self.expected_among) {
                if member != self.local {
                    let id = ctx.scenario.user_id(ctx.global_id(member, topology));
                    let sent = ctx.roster.slot(member).sent();
                    self.tracker.expect_until(&id, sent, now);
                }
            }
        }
    }

    /// While draining, wake exactly when the next ack times out or gap expires.
    fn schedule_settling(&mut self) {
        let ack = self
            .pending
            .front()
            .map(|&(_, scheduled)| clock::later(scheduled, self.ctx.settings.ack_timeout));
        if let Some(next) = ack
            .into_iter()
            .chain(self.tracker.next_expiry(self.ctx.settings.loss_grace))
            .min()
        {
            self.timers.next_sweep = Tick::at(next);
        }
    }

    /// Closes this conversation's books once nothing it awaits is outstanding (draining only).
    fn check_settled(&mut self) {
        if self.draining && !self.settled && self.pending.is_empty() && self.tracker.is_settled() {
            self.settled = true;
            self.ctx.books.close();
        }
    }

    fn on_pong(&mut self, data: &[u8]) {
        // Unsolicited pongs are allowed (RFC 6455 5.5.3); only ours carry an 8-byte stamp.
        if self.ctx.scenario.heartbeat.is_none() && data.len() == 8 {
            self.heartbeat_answered();
        }
    }

    fn heartbeat_answered(&mut self) {
        if let Some(sent) = std::mem::replace(&mut self.ping_sent, Tick::NONE).get() {
            self.ctx.meter().observe(Latency::Heartbeat, sent.elapsed());
        }
        self.timers.pong_deadline = Tick::NONE;
    }

    /// A data frame, text or binary, read through the scenario's codec (text protocols whose
    /// frames arrive as binary WebSocket frames are read as text); a frame the codec cannot
    /// read is counted unmatched.
    fn on_data(&mut self, data: &[u8]) {
        let metrics = self.ctx.meter();
        metrics.add(Count::Received, 1);
        metrics.add(Count::BytesReceived, data.len() as u64);
        // The text borrows the frame, not the context.
        match self.ctx.scenario.codec.decode(data) {
            Some(text) => self.on_text(&text),
            None => self.ctx.meter().add(Count::FramesUnmatched, 1),
        }
        self.check_settled();
    }

    /// Classifies a text frame — heartbeat reply, ack of our message, room delivery, or
    /// other — from one walk of it, and prepares the reply a reply rule gives it.
    fn on_text(&mut self, text: &str) {
        // What the frame means borrows the frame, not the context.
        let reading = &self.ctx.scenario.reading;
        let read = reading.read(text, self.mine());
        let replied = read.reply.is_some();
        if let Some(due) = &read.reply {
            let ctx = &self.ctx;
            let stamp = clock::now_micros();
            let values =
                self.identity
                    .values(ctx.target.as_str(), 0, stamp, self.share.payload_size());
            self.reply = Some(reading.render_reply(due, &values));
        }
        if self
            .ctx
            .scenario
            .heartbeat
            .as_ref()
            .is_some_and(|hb| hb.expect.is_none())
        {
            // A one-way heartbeat: any frame shows the server alive.
            self.timers.pong_deadline = Tick::NONE;
        }
        let foreign_ack = match read.meaning {
            // An ack of ours no longer pending came after its timeout: nothing more to do.
            Meaning::Ack(Acked::Id(id)) => match seq_of_msg_id(&id, &self.identity.user_id) {
                Some(seq) => {
                    self.on_ack(Some(seq));
                    false
                }
                None => true,
            },
            Meaning::Ack(Acked::Seq(seq)) => {
                self.on_ack(Some(seq));
                false
            }
            Meaning::Ack(Acked::Oldest) => {
                self.on_ack(None);
                false
            }
            meaning => {
                self.on_meaning(meaning, replied);
                false
            }
        };
        if foreign_ack {
            // Shaped like an ack, but naming someone else's message (every occupant of an
            // XMPP room gets the same stanza): it may be a delivery.
            let meaning = self
                .ctx
                .scenario
                .reading
                .delivery(text, self.mine())
                .unwrap_or(Meaning::Other);
            self.on_meaning(meaning, replied);
        }
    }

    /// Counts and acts on a frame that is not an ack of ours.
    fn on_meaning(&mut self, meaning: Meaning<'_>, replied: bool) {
        match meaning {
            Meaning::HeartbeatReply => self.heartbeat_answered(),
            Meaning::RefreshReply => {
                if let Some(refreshing) = self.refreshing_mut() {
                    refreshing.answer_by = None;
                }
            }
            Meaning::Delivery {
                sender: Some(sender),
                seq: Some(seq),
                ts: Some(ts),
                cursor,
            } => {
                if let Some(cursor) = cursor {
                    let last = self.identity.last_seen.get_or_insert_default();
                    last.clear();
                    last.push_str(&cursor);
                }
                self.on_delivery(&sender, seq, ts)
            }
            Meaning::Ack(Acked::Unreadable) | Meaning::Delivery { .. } => {
                self.ctx.meter().add(Count::FramesInvalid, 1)
            }
            Meaning::Ignored => self.ctx.meter().add(Count::FramesIgnored, 1),
            Meaning::Other if replied => {}
            Meaning::Ack(_) | Meaning::Other => self.ctx.meter().add(Count::FramesUnmatched, 1),
        }
    }

    /// The ack of message `seq`, or of the oldest pending one when acks carry no id.
    fn on_ack(&mut self, seq: Option<u64>) {
        // Acks come mostly in order, so the match is nearly always at the front.
        let at = match seq {
            Some(seq) => self.pending.iter().position(|&(s, _)| s == seq),
            None => (!self.pending.is_empty()).then_some(0),
        };
        if let Some((_, scheduled)) = at.and_then(|at| self.pending.remove(at)) {
            self.ctx.meter().observe(Latency::Rtt, scheduled.elapsed());
        }
    }

    /// A room delivery. Its timestamp is this process's clock, so one from the future is a
    /// wrong frame; only a first arrival from a member is a latency sample.
    fn on_delivery(&mut self, sender: &str, seq: u64, ts: u64) {
        let metrics = self.ctx.meter();
        if sender == &*self.identity.user_id {
            // The server echoed our own message to us: not a delivery.
            metrics.add(Count::OwnEchoes, 1);
            return;
        }
        let now = Instant::now();
        let Some(latency) = clock::elapsed_to(ts, now.into_std()) else {
            metrics.add(Count::FramesInvalid, 1);
            return;
        };
        let delivery = self.tracker.observe(sender, seq, now);
        if delivery == Delivery::Offline {
            metrics.observe(Latency::OfflineDelivery, latency);
            metrics.add(Count::OfflineDeliveries, 1);
        } else if delivery.is_first_arrival() {
            metrics.observe(Latency::Delivery, latency);
        }
        if delivery.is_first_arrival() {
            metrics.add(Count::DeliveriesReceived, 1);
        }
        match delivery {
            Delivery::Reordered => metrics.add(Count::Reordered, 1),
            Delivery::Duplicate => metrics.add(Count::Duplicated, 1),
            Delivery::SyncDuplicate => metrics.add(Count::DuplicatedSync, 1),
            Delivery::Foreign => metrics.add(Count::DeliveriesForeign, 1),
            Delivery::Invalid => metrics.add(Count::FramesInvalid, 1),
            Delivery::Untracked => metrics.add(Count::DeliveriesUntracked, 1),
            Delivery::New | Delivery::Offline => {}
        }
        count_books(&self.ctx, &mut self.tracker);
    }

    /// Expires acks past their timeout and delivery gaps past their grace period.
    fn sweep(&mut self, now: Instant) {
        // The fallback wake-up is one period after the last sweep: were it left in the past,
        // a quiet connection (heartbeat and messages rarer than the period) would spin.
        self.timers.postpone_sweep(now, sweep_period(&self.ctx));
        let metrics = self.ctx.meter();
        while let Some(&(_, scheduled)) = self.pending.front() {
            if now.duration_since(scheduled) < self.ctx.settings.ack_timeout {
                break;
            }
            self.pending.pop_front();
            metrics.add(Count::AckTimeouts, 1);
        }
        self.tracker.expire(now, self.ctx.settings.loss_grace);
        count_books(&self.ctx, &mut self.tracker);
        if self.draining {
            self.schedule_settling();
            self.check_settled();
        }
    }

    /// Settles the books when the connection ends: open delivery gaps are lost; messages the
    /// server will now never ack are timeouts unless we chose to leave mid-run (ramp-down,
    /// churn, room change). At the end of a drain (`drained`) everything still awaited
    /// counts: the senders' final sequences are read once more (every sender has stopped by
    /// now), so a dropped last message is lost, and unanswered acks are timeouts. With
    /// `resend_unacked`, a user that will reconnect keeps what was never acked, to send again:
    /// returned, oldest first.
    ///
    /// A user going offline (or handed over) to a server that syncs keeps its books open (only what is past
    /// its grace counts now), and every user keeps the last cursor it saw, for its next
    /// connection ([`Context::keep`]). So does one that went away before it learnt of a
    /// drain that began meanwhile: it comes back for what it missed, and the drain waits for
    /// it (were its books closed here, the drain's verdict would not count its return).
    pub fn finish(&mut self, drained: bool, reason: DisconnectReason) -> Vec<(u64, Instant)> {
        let now = Instant::now();
        let drained = drained && (self.draining || !reason.is_away());
        if drained {
            self.announce_final_sequences(now);
        }
        let away = !drained && reason.is_away() && self.ctx.keeps_books();
        if away {
            self.tracker.expire(now, self.ctx.settings.loss_grace);
        } else {
            self.tracker.finish();
        }
        count_books(&self.ctx, &mut self.tracker);
        let books = away.then(|| std::mem::take(&mut self.tracker));
        let cursor = self
            .identity
            .last_seen
            .take()
            .map_or_else(String::new, |c| *c);
        self.ctx.keep(self.local, Kept { books, cursor });
        let metrics = self.ctx.meter();
        // Unacknowledged: what is pending, and what was still waiting to be sent again.
        let mut unacked: Vec<(u64, Instant)> = self
            .pending
            .drain(..)
            .chain(self.rare.iter_mut().flat_map(|r| r.resend.drain(..).rev()))
            .collect();
        let reconnects = !drained && reason != DisconnectReason::ClientClose;
        if self.ctx.settings.resend_unacked && reconnects {
            unacked.sort_unstable_by_key(|&(seq, _)| seq);
        } else {
            if drained || reason.is_failure() {
                metrics.add(Count::AckTimeouts, unacked.len() as u64);
            }
            unacked.clear();
        }
        if !self.settled {
            self.settled = true;
            self.ctx.books.close();
        }
        unacked
    }
}

/// Counts what `tracker` found lost since last asked, by path, and a catch-up once complete.
fn count_books(ctx: &Context, tracker: &mut Tracker) {
    let metrics = ctx.meter();
    let lost = tracker.take_lost();
    for (count, n) in [(Count::Lost, lost.live), (Count::LostSync, lost.sync)] {
        if n > 0 {
            metrics.add(count, n);
        }
    }
    if let Some(took) = tracker.take_caught_up() {
        metrics.observe(Latency::Catchup, took);
    }
}

/// Expects in `tracker` the messages of `me`'s room-mates among the users `among` (local
/// ids), room by room, from what each has sent by now.
fn expect_members(
    ctx: &Context,
    tracker: &mut Tracker,
    me: u32,
    topology: Topology,
    among: std::ops::Range<u32>,
) {
    let members = (0..topology.rooms_per_user()).flat_map(|layer| {
        topology
            .members(me, layer, among.clone())
            .filter(move |&member| member != me)
            .map(move |member| {
                let id = ctx.scenario.user_id(ctx.global_id(member, topology));
                (
                    id.into_boxed_str(),
                    ctx.roster.slot(member),
                    topology.lane(layer),
                )
            })
    });
    tracker.expect_from_all(members);
}

impl Share {
    fn payload_size(&self) -> usize {
        self.payload_size as usize
    }

    fn of(ctx: &Context, desired: &Desired) -> Share {
        Share {
            payload_size: u32::try_from(desired.load.payload_size).unwrap_or(u32::MAX),
            local_users: ctx.local_users(&desired.load),
        }
    }
}

/// The deadlines of one connection; the user sleeps until the earliest of them. Held as
/// [`Tick`]s and [`Span`]s, half an `Instant`'s or a `Duration`'s size: every connected user
/// holds these.
struct Timers {
    next_ping: Tick,
    pong_deadline: Tick,
    next_send: Tick,
    /// Fallback wake-up for expiring acks and gaps when no send or ping comes soon (every
    /// [`sweep_period`]; always set).
    next_sweep: Tick,
    cycle: Option<Box<Cycle>>,
    message_interval: Span,
    heartbeat_interval: Span,
}

/// The deadlines of a user's comings and goings (`lifetime:`, `offline:`): boxed, as most
/// scenarios have neither, and their users pay a pointer for them.
#[derive(Default)]
struct Cycle {
    churn_at: Option<Instant>,
    /// When the user goes away (`offline:`).
    offline_at: Option<Instant>,
    /// A silent user (`offline: {how: silent}`) sends nothing until then.
    quiet_until: Option<Instant>,
}

/// How often a quiet connection wakes up to expire acks and gaps.
fn sweep_period(ctx: &Context) -> Duration {
    ctx.settings.ack_timeout.max(ctx.settings.loss_grace)
}

/// When the user next goes away (`offline:`), drawn from `now`.
fn next_absence(ctx: &Context, now: Instant) -> Option<Instant> {
    ctx.settings
        .offline
        .map(|o| clock::later(now, o.every.sample(&mut rand::rng())))
}

/// Messages go out only with a message flow in the scenario, while not paused or draining.
fn sending_interval(ctx: &Context, desired: &crate::load::Desired, user: u32) -> Duration {
    if !desired.may_send() || ctx.scenario.message.is_none() || !ctx.settings.schedule.speaks(user)
    {
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
    /// The end of a silence: pings and sends start again at a random phase, and the next
    /// absence is drawn.
    fn speak_again(&mut self, ctx: &Context, now: Instant) {
        self.pong_deadline = Tick::NONE;
        self.next_ping = Tick::of(random_phase(now, self.heartbeat_interval.get()));
        self.next_send = Tick::of(random_phase(now, self.message_interval.get()));
        let cycle = self.cycle.get_or_insert_with(Box::default);
        cycle.quiet_until = None;
        cycle.offline_at = next_absence(ctx, now);
    }

    /// A silent user goes quiet until `until`: no heartbeat is awaited meanwhile, and no
    /// absence is due until it speaks again.
    fn go_quiet(&mut self, until: Instant) {
        let cycle = self.cycle.get_or_insert_with(Box::default);
        cycle.quiet_until = Some(until);
        cycle.offline_at = None;
        self.pong_deadline = Tick::NONE;
    }

    fn churn_at(&self) -> Option<Instant> {
        self.cycle.as_ref()?.churn_at
    }

    fn offline_at(&self) -> Option<Instant> {
        self.cycle.as_ref()?.offline_at
    }

    fn quiet_until(&self) -> Option<Instant> {
        self.cycle.as_ref()?.quiet_until
    }

    /// First ping and first send at a random phase.
    fn start(ctx: &Context, message_interval: Duration, heartbeat_interval: Duration) -> Timers {
        let now = Instant::now();
        let cycle = Cycle {
            churn_at: ctx.settings.lifetime.as_ref().map(|l| {
                let spread = l.max.saturating_sub(l.min);
                clock::later(now, l.min + spread.mul_f64(rand::rng().random::<f64>()))
            }),
            offline_at: next_absence(ctx, now),
            quiet_until: None,
        };
        let cycles = cycle.churn_at.is_some() || cycle.offline_at.is_some();
        Timers {
            next_ping: Tick::of(random_phase(now, heartbeat_interval)),
            pong_deadline: Tick::NONE,
            next_send: Tick::of(random_phase(now, message_interval)),
            next_sweep: Tick::at(clock::later(now, sweep_period(ctx))),
            cycle: cycles.then(|| Box::new(cycle)),
            message_interval: Span::of(message_interval),
            heartbeat_interval: Span::of(heartbeat_interval),
        }
    }

    fn earliest(&self) -> Instant {
        if let Some(until) = self.quiet_until() {
            return until.min(self.next_sweep());
        }
        [
            self.next_ping.get(),
            self.pong_deadline.get(),
            self.next_send.get(),
            self.churn_at(),
            self.offline_at(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_sweep(), Instant::min)
    }

    fn next_sweep(&self) -> Instant {
        self.next_sweep.get().unwrap_or_else(Instant::now)
    }

    /// Whether a heartbeat is due; if so, schedules the next and arms the reply deadline.
    fn ping_due(&mut self, now: Instant, reply_timeout: Duration) -> bool {
        let Some(due) = self.next_ping.get().filter(|&t| now >= t) else {
            return false;
        };
        self.next_ping = Tick::at(clock::later(due, self.heartbeat_interval.get()));
        // One outstanding ping at a time: its deadline is what a missed reply is judged by.
        if self.pong_deadline == Tick::NONE {
            self.pong_deadline = Tick::at(clock::later(now, reply_timeout));
        }
        true
    }

    /// If a message is due, returns its *scheduled* time and schedules the next one, the gap
    /// drawn from `schedule` for user `user` (whose bursts are phased from `epoch`). The
    /// schedule never slips: a late user sends its backlog back to back, each message stamped
    /// with the time it should have left (no coordinated omission).
    fn send_due(
        &mut self,
        now: Instant,
        schedule: &Schedule,
        user: u32,
        epoch: Instant,
    ) -> Option<Instant> {
        let due = self.next_send.get().filter(|&t| now >= t)?;
        let interval = self.message_interval.get();
        let gap = match schedule.gap_factor(user) {
            // Exact, as a fixed schedule always was (no round trip through a float).
            1.0 => interval,
            factor => interval.mul_f64(factor),
        };
        let next = clock::later(due, gap);
        self.next_send = Tick::at(schedule.resting_until(user, epoch, next).unwrap_or(next));
        Some(due)
    }

    /// Every wake-up sweeps ([`Conversation::sweep`]), so the fallback only fires on quiet
    /// connections.
    fn postpone_sweep(&mut self, now: Instant, period: Duration) {
        self.next_sweep = Tick::at(clock::later(now, period));
    }

    /// A new message interval (0 stops sending). Resuming starts a fresh schedule: the time
    /// spent paused is not a backlog to catch up on.
    fn set_message_interval(&mut self, interval: Duration) {
        let interval = Span::of(interval);
        if interval != self.message_interval {
            self.message_interval = interval;
            self.next_send = Tick::of(reschedule(self.next_send.get(), interval.get()));
        }
    }

    fn set_heartbeat_interval(&mut self, interval: Duration) {
        let interval = Span::of(interval);
        if interval != self.heartbeat_interval {
            self.heartbeat_interval = interval;
            self.next_ping = Tick::of(reschedule(self.next_ping.get(), interval.get()));
            if interval.get().is_zero() {
                self.pong_deadline = Tick::NONE;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(message_interval: Duration, next_send: Option<Instant>) -> Timers {
        let now = Instant::now();
        Timers {
            next_ping: Tick::NONE,
            pong_deadline: Tick::NONE,
            next_send: Tick::of(next_send),
            next_sweep: Tick::at(now + Duration::from_secs(60)),
            cycle: None,
            message_interval: Span::of(message_interval),
            heartbeat_interval: Span::of(Duration::from_secs(1)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_user_keeps_the_schedule() {
        let first = Instant::now();
        let mut t = timers(Duration::from_millis(100), Some(first));
        // Wake up 350 ms late: four messages are due, each stamped with its own slot.
        let now = first + Duration::from_millis(350);
        let fixed = Schedule::default();
        let sent: Vec<_> = std::iter::from_fn(|| t.send_due(now, &fixed, 0, first)).collect();
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
        let poisson = Schedule {
            gaps: super::super::settings::Gaps::Exponential,
            ..Schedule::default()
        };
        let n = 20_000;
        let mut last = start;
        for _ in 0..n {
            last = t.send_due(far, &poisson, 0, start).expect("due");
        }
        let mean = (last - start).as_secs_f64() / f64::from(n - 1);
        assert!((mean - 0.1).abs() < 0.005, "mean gap {mean}");
    }

    /// The gaps `schedule` gives a user whose mean gap is `interval`: `n` of them.
    fn gaps_of(schedule: &Schedule, interval: Duration, user: u32, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut t = timers(interval, Some(start));
        let far = start + Duration::from_secs(10_000_000);
        let sends: Vec<Instant> = (0..=n)
            .map(|_| t.send_due(far, schedule, user, start).expect("due"))
            .collect();
        sends.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn schedule(yaml: &str) -> Schedule {
        serde_norway::from_str(yaml).expect("a schedule")
    }

    #[tokio::test(start_paused = true)]
    async fn lognormal_and_uniform_gaps_have_their_shape_and_the_interval_as_mean() {
        use super::super::settings::Gaps;
        let lognormal = schedule("{lognormal: {median: 2s, p99: 30s}}");
        let mean = lognormal.gaps.mean().expect("a mean of its own");
        let mut gaps = gaps_of(&lognormal, mean, 0, 40_000);
        gaps.sort();
        let at = |q: f64| gaps[(q * gaps.len() as f64) as usize].as_secs_f64();
        // Quantiles of 40,000 draws: within a few per cent of the distribution's own.
        assert!((at(0.5) - 2.0).abs() < 0.1, "median {}", at(0.5));
        assert!((at(0.99) - 30.0).abs() < 3.0, "p99 {}", at(0.99));
        let average = gaps.iter().sum::<Duration>().as_secs_f64() / gaps.len() as f64;
        assert!(
            (average - mean.as_secs_f64()).abs() < mean.as_secs_f64() * 0.05,
            "mean {average} against {mean:?}"
        );
        // A live interval twice the mean stretches every gap: same shape, half the rate.
        let doubled = gaps_of(&lognormal, mean * 2, 0, 40_000);
        let average = doubled.iter().sum::<Duration>().as_secs_f64() / doubled.len() as f64;
        assert!(
            (average / mean.as_secs_f64() - 2.0).abs() < 0.1,
            "{average}"
        );
        let uniform = schedule("{uniform: {min: 100ms, max: 300ms}}");
        assert!(matches!(uniform.gaps, Gaps::Uniform { .. }));
        let gaps = gaps_of(&uniform, Duration::from_millis(200), 0, 10_000);
        assert!(
            gaps.iter()
                .all(|g| (Duration::from_millis(100)..=Duration::from_millis(300)).contains(g))
        );
        let average = gaps.iter().sum::<Duration>().as_secs_f64() / gaps.len() as f64;
        assert!((average - 0.2).abs() < 0.005, "{average}");
    }

    #[test]
    fn a_skewed_group_keeps_its_rate_while_a_few_users_send_most() {
        let even = schedule("{gaps: fixed, skew: 3}");
        let n = 100_000u32;
        let mean = (0..n).map(|u| even.rate_factor(u)).sum::<f64>() / f64::from(n);
        assert!((mean - 1.0).abs() < 0.02, "mean rate factor {mean}");
        assert_eq!(even.rate_factor(7), even.rate_factor(7), "fixed per user");
        let pareto = schedule("{gaps: poisson, skew: 1.16}");
        let mut rates: Vec<f64> = (0..n).map(|u| pareto.rate_factor(u)).collect();
        rates.sort_by(|a, b| b.total_cmp(a));
        let top: f64 = rates[..n as usize / 5].iter().sum();
        let share = top / rates.iter().sum::<f64>();
        assert!(
            share > 0.6,
            "the top fifth sends {share:.2} of the messages"
        );
        assert_eq!(Schedule::default().rate_factor(3), 1.0);
    }

    #[test]
    fn only_the_speakers_speak_and_always_the_same_ones() {
        let crowd = schedule("{gaps: poisson, speakers: 1%}");
        let speakers: Vec<u32> = (0..100_000).filter(|&u| crowd.speaks(u)).collect();
        // 1,000 expected; a binomial count's standard deviation is ~31.
        assert!(
            (speakers.len() as i64 - 1000).abs() < 200,
            "{}",
            speakers.len()
        );
        assert!(
            speakers.iter().all(|&u| crowd.speaks(u)),
            "the same users each time"
        );
        assert!((0..100).all(|u| Schedule::default().speaks(u)));
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_send_only_in_their_on_periods() {
        let bursty = schedule("{gaps: fixed, bursts: {on: 1s, off: 4s}}");
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut t = timers(interval, Some(start));
        let far = start + Duration::from_secs(100_000);
        let sends: Vec<Instant> = (0..1000)
            .map(|_| t.send_due(far, &bursty, 5, start).expect("due"))
            .collect();
        for (i, at) in sends.iter().enumerate().skip(1) {
            assert_eq!(
                bursty.resting_until(5, start, *at),
                None,
                "send {i} in a rest"
            );
        }
        // Ten per one-second burst, one burst every five seconds: 1000 sends span ~100 cycles.
        let span = (sends[999] - sends[0]).as_secs_f64();
        assert!((span - 500.0).abs() < 10.0, "{span}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_reply_keeps_the_first_deadline() {
        let timeout = Duration::from_millis(500);
        let first = Instant::now();
        let mut t = timers(Duration::ZERO, None);
        t.next_ping = Tick::of(Some(first));
        assert!(t.ping_due(first, timeout));
        assert_eq!(
            t.pong_deadline.get(),
            Some(first + Duration::from_millis(500))
        );
        let second = first + Duration::from_secs(1);
        assert!(t.ping_due(second, timeout));
        assert_eq!(
            t.pong_deadline.get(),
            Some(first + Duration::from_millis(500))
        );
        assert_eq!(t.earliest(), first + Duration::from_millis(500));
    }

    /// A conversation of user `id` (im scenario) under `yaml`; its heartbeat and send schedule
    /// start as the test sets them.
    fn conversation(
        yaml: &str,
        id: u32,
    ) -> (
        Arc<Context>,
        tokio::sync::watch::Sender<Desired>,
        User,
        Conversation,
    ) {
        let ctx = super::super::test_context_with(yaml);
        let initial = crate::config::Config::parse(yaml).expect("valid").load();
        let (desired, _) = tokio::sync::watch::channel(Desired::new(initial));
        let user = User::new(id, Arc::clone(&ctx), desired.subscribe());
        let mut talk = Conversation::new(
            &user,
            ctx.scenario.identity(id, ctx.scenario.topology(10)),
            Vec::new(),
        );
        talk.timers.next_ping = Tick::of(None);
        talk.timers.next_send = Tick::of(None);
        (ctx, desired, user, talk)
    }

    /// Ticks and collects every frame the tick made due.
    fn tick(talk: &mut Conversation, now: Instant) -> Result<VecDeque<Outbound>, Ended> {
        talk.on_tick(now)?;
        let mut out = VecDeque::new();
        while let Some(outbound) = talk.next_outbound()? {
            out.push_back(outbound);
        }
        Ok(out)
    }

    /// Makes a message due now, ticks, and reports it written; returns its sequence.
    fn send_one(talk: &mut Conversation) -> u64 {
        talk.timers.next_send = Tick::of(Some(Instant::now()));
        let mut out = tick(talk, Instant::now()).expect("connected");
        match out.pop_front() {
            Some(Outbound::Message {
                frame,
                seq,
                scheduled,
                ..
            }) => {
                talk.sent(seq, scheduled, frame.len(), false);
                seq
            }
            other => panic!("a message is due: {other:?}"),
        }
    }

    fn scheduled_messages(out: &VecDeque<Outbound>) -> Vec<Instant> {
        out.iter()
            .filter_map(|o| match o {
                Outbound::Message { scheduled, .. } => Some(*scheduled),
                _ => None,
            })
            .collect()
    }

    fn deliver(talk: &mut Conversation, from: &str, seq: u64, ts: u64) {
        let frame = format!(r#"{{"type":"deliver","from":"{from}","seq":{seq},"ts":{ts}}}"#);
        talk.on_frame(&Message::text(frame)).expect("connected");
    }

    /// A hostile or shared server: copies of one delivery, sequences never sent, senders that
    /// are not users of this process, timestamps from the future. Only the first arrival of a
    /// member's message is a delivery and a latency sample; the rest is counted apart, and
    /// nothing is lost that was not sent.
    #[tokio::test(start_paused = true)]
    async fn deliveries_are_believed_only_as_far_as_this_process_knows() {
        let (ctx, _desired, _user, mut talk) = conversation("users: 10", 0);
        let member = ctx.roster.slot(1);
        for _ in 0..3 {
            member.mark_sent(member.next_seq());
        }
        let now = clock::micros_at(Instant::now().into_std());
        for _ in 0..1000 {
            deliver(&mut talk, "u1", 2, now);
        }
        deliver(&mut talk, "u1", 1 << 63, now);
        deliver(&mut talk, "u1", 3, now + 5_000_000);
        for i in 0..500 {
            deliver(&mut talk, &format!("stranger{i}"), 7, now);
        }
        ctx.metrics.flush_thread();
        assert_eq!(ctx.metrics.total(Count::DeliveriesReceived), 1);
        assert_eq!(ctx.metrics.delivery_latency.get_sample_count(), 1);
        assert_eq!(ctx.metrics.total(Count::Duplicated), 999);
        assert_eq!(
            ctx.metrics.total(Count::FramesInvalid),
            2,
            "2^63, the future"
        );
        assert_eq!(ctx.metrics.total(Count::DeliveriesForeign), 500);
        // The end of a drain: u1's last sequence (3) is known, and never came.
        talk.finish(true, DisconnectReason::ClientClose);
        assert_eq!(
            ctx.metrics.total(Count::Lost),
            2,
            "1 and 3 of u1 never came; nothing for the strangers or the invalid sequence"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_connection_hands_out_its_backlog_each_with_its_scheduled_time() {
        let (ctx, _desired, _user, mut talk) = conversation("message_interval: 100ms", 0);
        let start = Instant::now();
        talk.timers.next_send = Tick::of(Some(start));
        // The generator stalled for 350 ms: four messages are due, stamped with their slots.
        tokio::time::advance(Duration::from_millis(350)).await;
        let mut out = VecDeque::new();
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("still connected");
        let expected: Vec<Instant> = (0..4)
            .map(|i| start + Duration::from_millis(100 * i))
            .collect();
        assert_eq!(scheduled_messages(&out), expected);
        for outbound in out.drain(..) {
            if let Outbound::Message {
                frame,
                seq,
                scheduled,
                ..
            } = outbound
            {
                talk.sent(seq, scheduled, frame.len(), false);
            }
        }
        assert_eq!(ctx.metrics.total(Count::Sent), 4);
        // The oldest left 350 ms late: the send lag says so.
        assert_eq!(ctx.metrics.send_lag.get_sample_count(), 4);
        assert!((ctx.metrics.send_lag.get_sample_sum() - (0.35 + 0.25 + 0.15 + 0.05)).abs() < 1e-6);
        assert_eq!(
            talk.deadline(),
            start + Duration::from_millis(400),
            "the schedule holds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_message_times_out_after_ack_timeout_and_an_answered_one_does_not() {
        let (ctx, _desired, _user, mut talk) =
            conversation("message_interval: 1s\nack_timeout: 2s", 0);
        send_one(&mut talk);
        let mut out = VecDeque::new();
        tokio::time::advance(Duration::from_millis(1999)).await;
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("connected");
        assert_eq!(ctx.metrics.total(Count::AckTimeouts), 0, "not yet");
        // The second message (due at 1 s) is acked; the first is not.
        let Some(Outbound::Message {
            frame,
            seq: second,
            scheduled,
            ..
        }) = out.pop_front()
        else {
            panic!("the second message: {out:?}");
        };
        talk.sent(second, scheduled, frame.len(), false);
        let ack = format!(r#"{{"type":"ack","id":"u0-{second}"}}"#);
        talk.on_frame(&Message::text(ack)).expect("connected");
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("connected");
        assert_eq!(
            ctx.metrics.total(Count::AckTimeouts),
            1,
            "the first, at 2 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_messages_are_sent_again_after_a_reconnect_with_their_ids() {
        let yaml = "message_interval: 1s\nack_timeout: 30s\nresend_unacked: true";
        let (ctx, _desired, user, mut talk) = conversation(yaml, 0);
        let first = send_one(&mut talk);
        let second = send_one(&mut talk);
        let carried = talk.finish(false, DisconnectReason::ServerClose);
        assert_eq!(
            carried.iter().map(|m| m.0).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!(ctx.metrics.total(Count::AckTimeouts), 0, "not given up");
        let mut again = Conversation::new(
            &user,
            ctx.scenario.identity(0, ctx.scenario.topology(10)),
            carried,
        );
        again.timers.next_send = Tick::of(None);
        again.timers.next_ping = Tick::of(None);
        assert!(again.deadline() <= Instant::now(), "due at once");
        // Draining, nothing more is sent: the resends wait, and do not keep the user's loop
        // due at once (it spun until the drain ended).
        again.draining = true;
        assert!(again.deadline() > Instant::now(), "not due while draining");
        again.draining = false;
        let out = tick(&mut again, Instant::now()).expect("connected");
        let resent: Vec<(u64, String)> = out
            .iter()
            .filter_map(|o| match o {
                Outbound::Message {
                    frame,
                    seq,
                    resent: true,
                    ..
                } => Some((*seq, frame.to_text().expect("text").to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(resent.len(), 2, "{out:?}");
        assert_eq!(resent[0].0, first, "oldest first");
        assert!(
            resent[0].1.contains(&format!("\"id\":\"u0-{first}\"")),
            "same id"
        );
        for outbound in out {
            if let Outbound::Message {
                frame,
                seq,
                scheduled,
                resent,
            } = outbound
            {
                again.sent(seq, scheduled, frame.len(), resent);
            }
        }
        assert_eq!(ctx.metrics.total(Count::Resent), 2);
        assert_eq!(ctx.metrics.total(Count::Sent), 2, "not new messages");
        let ack = format!(r#"{{"type":"ack","id":"u0-{second}"}}"#);
        again.on_frame(&Message::text(ack)).expect("connected");
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 1);
        // Without resend_unacked (or when the user leaves), they are timeouts as before.
        assert!(
            again
                .finish(false, DisconnectReason::ClientClose)
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_io_ping_is_answered_first_and_acks_name_our_sequence() {
        let (ctx, _desired, _user, mut talk) = conversation(
            "scenario: socketio
message_interval: 1s",
            0,
        );
        let seq = send_one(&mut talk);
        talk.on_frame(&Message::text("2")).expect("connected");
        talk.timers.next_send = Tick::of(Some(Instant::now()));
        let out = tick(&mut talk, Instant::now()).expect("connected");
        assert_eq!(
            out.front(),
            Some(&Outbound::Reply(Message::text("3"))),
            "the pong goes before anything else: {out:?}"
        );
        assert_eq!(
            ctx.metrics.total(Count::FramesUnmatched),
            0,
            "a ping we answer is expected"
        );
        // The ack id is our sequence; another number acknowledges nothing of ours.
        talk.on_frame(&Message::text(format!("43{}[]", seq + 100)))
            .expect("connected");
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 0);
        talk.on_frame(&Message::text(format!("43{seq}[{{\"ok\":true}}]")))
            .expect("connected");
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn acks_without_an_id_answer_the_oldest_message_and_binary_text_is_read() {
        let yaml = "message_interval: 1s
scenario:
  message:
    send: 'PUB {{seq}}'
    ack: {match: {regex: '^\\+OK$'}}
";
        let (ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        send_one(&mut talk);
        send_one(&mut talk);
        talk.on_frame(&Message::binary(b"+OK".to_vec()))
            .expect("connected");
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 1);
        assert_eq!(talk.pending.len(), 1, "the oldest was answered");
        talk.on_frame(&Message::binary(vec![0xff, 0xfe]))
            .expect("connected");
        assert_eq!(
            ctx.metrics.total(Count::FramesUnmatched),
            1,
            "not text: unmatched"
        );
        talk.on_frame(&Message::text("+OK")).expect("connected");
        talk.on_frame(&Message::text("+OK")).expect("connected");
        assert_eq!(
            ctx.metrics.message_rtt.get_sample_count(),
            2,
            "nothing left to answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_heartbeat_ends_the_connection_after_its_timeout_a_reply_clears_it() {
        let yaml = "heartbeat: {interval: 1s, timeout: 500ms}\nmessage_interval: 0s";
        let (_ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        talk.timers.next_ping = Tick::of(Some(Instant::now()));
        let mut out = VecDeque::new();
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("connected");
        assert!(
            matches!(out.pop_front(), Some(Outbound::Heartbeat(Message::Text(_)))),
            "the im app ping"
        );
        // A reply clears the deadline: the next ping at 1 s starts a new one.
        tokio::time::advance(Duration::from_millis(200)).await;
        talk.on_frame(&Message::text(r#"{"type":"pong","ts":1}"#))
            .expect("connected");
        tokio::time::advance(Duration::from_millis(800)).await;
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("the reply came in time");
        assert_eq!(out.len(), 1, "the next ping");
        tokio::time::advance(Duration::from_millis(499)).await;
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("still within the timeout");
        tokio::time::advance(Duration::from_millis(1)).await;
        let ended = talk.on_tick(Instant::now()).expect_err("no reply");
        assert_eq!(ended.reason, DisconnectReason::HeartbeatTimeout);
        assert!(!ended.is_planned());
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_way_heartbeat_is_answered_by_any_frame() {
        let yaml = "heartbeat: {interval: 1s, timeout: 500ms}\nmessage_interval: 0s\n\
                    scenario: {extends: im, heartbeat: {send: 'PING'}}";
        let (ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        talk.timers.next_ping = Tick::of(Some(Instant::now()));
        let out = tick(&mut talk, Instant::now()).expect("connected");
        assert!(
            matches!(out.front(), Some(Outbound::Heartbeat(_))),
            "{out:?}"
        );
        // Any frame, even one nothing expects, shows the server alive.
        tokio::time::advance(Duration::from_millis(400)).await;
        talk.on_frame(&Message::text("banner")).expect("connected");
        tokio::time::advance(Duration::from_millis(500)).await;
        tick(&mut talk, Instant::now()).expect("a frame came in time");
        // The next heartbeat (at 1 s) meets silence: it times out.
        tokio::time::advance(Duration::from_millis(100)).await;
        tick(&mut talk, Instant::now()).expect("just sent");
        tokio::time::advance(Duration::from_millis(500)).await;
        let ended = talk.on_tick(Instant::now()).expect_err("silence");
        assert_eq!(ended.reason, DisconnectReason::HeartbeatTimeout);
        ctx.metrics.flush_thread();
        assert_eq!(
            ctx.metrics.heartbeat_rtt.get_sample_count(),
            0,
            "no round trip to time"
        );
    }

    /// One shape for ack and delivery, as XMPP rooms send every occupant the same stanza: a
    /// frame naming our message is its ack, one naming another's is a delivery; our own
    /// message delivered back, frames an `ignore` rule expects, and the rest are counted apart.
    #[tokio::test(start_paused = true)]
    async fn an_ack_shaped_frame_of_someone_elses_message_is_a_delivery() {
        let yaml = r#"message_interval: 1s
scenario:
  extends: im
  message:
    send: '{"type":"msg","id":"{{msg_id}}","from":"{{user_id}}","seq":{{seq}},"ts":{{ts}}}'
    ack: {match: {pointer: /type, equals: msg}, id: /id}
    delivery: {match: {pointer: /type, equals: msg}, sender: /from, seq: /seq, ts: /ts}
  ignore: [{pointer: /type, equals: complete}]"#;
        let (ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        let seq = send_one(&mut talk);
        let member = ctx.roster.slot(1);
        member.mark_sent(member.next_seq());
        let now = clock::micros_at(Instant::now().into_std());
        let stanza = |id: &str, from: &str, seq: u64| {
            Message::text(format!(
                r#"{{"type":"msg","id":"{id}","from":"{from}","seq":{seq},"ts":{now}}}"#
            ))
        };
        talk.on_frame(&stanza(&format!("u0-{seq}"), "u0", seq))
            .expect("connected");
        talk.on_frame(&stanza("u1-1", "u1", 1)).expect("connected");
        talk.on_frame(&Message::text(r#"{"type":"complete"}"#))
            .expect("connected");
        talk.on_frame(&Message::text(r#"{"type":"presence"}"#))
            .expect("connected");
        ctx.metrics.flush_thread();
        assert_eq!(ctx.metrics.message_rtt.get_sample_count(), 1, "our ack");
        assert_eq!(
            ctx.metrics.total(Count::DeliveriesReceived),
            1,
            "u1's message"
        );
        assert_eq!(ctx.metrics.total(Count::FramesIgnored), 1);
        assert_eq!(ctx.metrics.total(Count::FramesUnmatched), 1, "the presence");
        // A server that sends the im protocol's delivery of our own message back.
        let (ctx, _desired, _user, mut talk) = conversation("users: 10", 0);
        let seq = send_one(&mut talk);
        deliver(
            &mut talk,
            "u0",
            seq,
            clock::micros_at(Instant::now().into_std()),
        );
        ctx.metrics.flush_thread();
        assert_eq!(ctx.metrics.total(Count::OwnEchoes), 1);
        assert_eq!(ctx.metrics.total(Count::DeliveriesReceived), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn going_offline_ends_the_connection_by_choice_when_its_time_comes() {
        let yaml = "offline: {every: 3s, for: 1s}\nmessage_interval: 0s\nheartbeat: {interval: 0s}";
        let (_ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        assert_eq!(talk.deadline(), Instant::now() + Duration::from_secs(3));
        tokio::time::advance(Duration::from_millis(2999)).await;
        tick(&mut talk, Instant::now()).expect("not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        let ended = talk.on_tick(Instant::now());
        assert_eq!(ended, Err(Ended::planned(DisconnectReason::Offline)));
        assert!(!DisconnectReason::Offline.is_failure());
    }

    /// A silent user sends nothing from its offline time on — no message, no heartbeat —
    /// sleeps until its silence ends, then speaks again on the same connection; a connection
    /// the server ends meanwhile counts as going offline, for the rest of the silence.
    #[tokio::test(start_paused = true)]
    async fn a_silent_user_sends_nothing_until_its_time_away_is_up() {
        let yaml = "offline: {every: 2s, for: 5s, how: silent}\nmessage_interval: 100ms\nheartbeat: {interval: 1s}";
        let (_ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        let start = Instant::now();
        talk.timers.next_ping = Tick::of(Some(start));
        talk.timers.next_send = Tick::of(Some(start));
        let mut sent_before = 0;
        while Instant::now() < start + Duration::from_secs(2) {
            tokio::time::advance(talk.deadline().saturating_duration_since(Instant::now())).await;
            sent_before += tick(&mut talk, Instant::now()).expect("talking").len();
        }
        assert!(sent_before > 10, "messages and pings before: {sent_before}");
        assert_eq!(
            talk.deadline(),
            start + Duration::from_secs(7),
            "asleep until the silence ends"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(tick(&mut talk, Instant::now()).expect("silent").is_empty());
        let ended = talk.while_silent(Ended::failed(DisconnectReason::ServerClose, "idle timeout"));
        assert_eq!(ended.reason, DisconnectReason::Offline);
        assert_eq!(
            ended.away,
            Some(Duration::from_secs(2)),
            "the rest of the silence"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut after = 0;
        let back = Instant::now();
        while Instant::now() < back + Duration::from_secs(1) {
            after += tick(&mut talk, Instant::now()).expect("talking").len();
            tokio::time::advance(talk.deadline().saturating_duration_since(Instant::now())).await;
        }
        assert!(after > 5, "speaking again: {after}");
        let not_silent = talk.while_silent(Ended::failed(DisconnectReason::ServerClose, "bye"));
        assert_eq!(not_silent.reason, DisconnectReason::ServerClose);
    }

    /// Its tick came before the news of the drain: the user went away by its own choice, and
    /// its books are kept for its return (which the drain waits for), not closed as at the
    /// drain's end.
    #[tokio::test(start_paused = true)]
    async fn going_offline_just_as_the_drain_begins_keeps_the_books_for_the_return() {
        let yaml = "offline: {every: 3s, for: 1s, expect_sync: true}\nmessage_interval: 1s\nheartbeat: {interval: 0s}";
        let (ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        assert!(ctx.keeps_books());
        tokio::time::advance(Duration::from_secs(3)).await;
        let ended = talk.on_tick(Instant::now()).expect_err("offline");
        assert_eq!(ended.reason, DisconnectReason::Offline);
        // The desired state says the fleet drains by now; the conversation had not heard.
        talk.finish(true, ended.reason);
        assert!(ctx.holds_books(0), "kept for the return");
        // Told of the drain in time, a user does not go away, and its books close.
        let (ctx, desired, _user, mut talk) = conversation(yaml, 0);
        let mut draining = desired.borrow().clone();
        draining.draining = true;
        talk.on_desired(&draining).expect("still connected");
        tokio::time::advance(Duration::from_secs(3)).await;
        talk.on_tick(Instant::now())
            .expect("no time away while draining");
        talk.finish(true, DisconnectReason::ClientClose);
        assert!(!ctx.holds_books(0));
    }

    #[tokio::test(start_paused = true)]
    async fn churn_ends_the_connection_by_choice_at_its_lifetime() {
        let yaml = "lifetime: {min: 2s, max: 2s}\nmessage_interval: 0s\nheartbeat: {interval: 0s}";
        let (_ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        let mut out = VecDeque::new();
        tokio::time::advance(Duration::from_millis(1999)).await;
        tick(&mut talk, Instant::now())
            .map(|more| out.extend(more))
            .expect("not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            talk.on_tick(Instant::now()),
            Err(Ended::planned(DisconnectReason::Churn))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_change_ends_by_choice_and_abandons_pending_acks() {
        // User 7 is in room-0 with rooms of 10, in room-1 with rooms of 5.
        let (ctx, desired, _user, mut talk) = conversation("message_interval: 1s\nusers: 20", 7);
        send_one(&mut talk);
        let mut same_room = desired.borrow().clone();
        same_room.load.payload_size = 10;
        assert_eq!(
            talk.on_desired(&same_room),
            Ok(()),
            "other changes keep the connection"
        );
        let mut regrouped = desired.borrow().clone();
        regrouped.load.room_size = 5;
        let ended = talk.on_desired(&regrouped).expect_err("rooms regrouped");
        assert_eq!(ended, Ended::planned(DisconnectReason::RoomChange));
        talk.finish(false, ended.reason);
        assert_eq!(ctx.metrics.total(Count::AckTimeouts), 0, "left by choice");
        // The same pending ack, the server hanging up: a timeout.
        let (ctx, _desired, _user, mut talk) = conversation("message_interval: 1s\nusers: 20", 7);
        send_one(&mut talk);
        let ended = talk
            .on_frame(&Message::Close(None))
            .expect_err("the server closed");
        talk.finish(false, ended.reason);
        assert_eq!(ctx.metrics.total(Count::AckTimeouts), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_sweeps_once_per_period_not_in_a_loop() {
        let yaml = "message_interval: 30s\nheartbeat: {interval: 30s}";
        let (_ctx, _desired, _user, mut talk) = conversation(yaml, 0);
        // Heartbeat and messages far off: only the sweep fallback wakes this connection.
        talk.timers.next_ping = Tick::of(Some(Instant::now() + Duration::from_secs(600)));
        tokio::time::advance(sweep_period(&talk.ctx)).await;
        let now = Instant::now();
        assert_eq!(talk.deadline(), now, "the fallback is due");
        tick(&mut talk, now).expect("connected");
        assert_eq!(
            talk.deadline(),
            now + sweep_period(&talk.ctx),
            "one period later, not again at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changing_the_interval_reschedules_sending() {
        let mut t = timers(Duration::ZERO, None);
        t.set_message_interval(Duration::from_millis(100));
        let next = t.next_send.get().expect("sending starts");
        assert!(next <= Instant::now() + Duration::from_millis(100));
        t.set_message_interval(Duration::ZERO);
        assert_eq!(t.next_send.get(), None, "0 stops sending");
    }
}
