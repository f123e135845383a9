//! One IM connection on the target: login, join, message -> ack + room broadcast, ping ->
//! pong, and with `--history` sync -> what the client missed ([`store`]); frames that are
//! not commands are echoed back. Output goes through a per-connection
//! queue so delivery delays and stalls never block reading. The connection is any
//! `Sink + Stream` of WebSocket messages: a WebSocket, or frames of a length-prefixed TCP
//! stream ([`framed`]).

use std::cell::{Cell, OnceCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, close_code};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::codec::framing::{FrameCodec, Framing, MAX_FRAME};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::store::{self, RoomLog};

/// A frame waiting to go out, and the earliest time it may.
/// The kinds of a sync's frames: the backlog, and the `sync_twice` fault's copies of it.
pub const SYNC: &str = "sync";
pub const SYNC_AGAIN: &str = "sync_again";

struct Outgoing {
    message: Message,
    at: Instant,
    kind: &'static str,
}

type Outbox = mpsc::UnboundedSender<Outgoing>;

/// Members of one room: connection id -> (user, outbox).
type Members = HashMap<u64, (Arc<str>, Outbox)>;

/// One room: its members now, and what it has carried since it was first joined (kept
/// when it empties, so a test can compare the target's books with the fleet's).
#[derive(Default)]
struct Room {
    members: Members,
    stats: Arc<RoomCounters>,
    /// What it carried lately, by cursor (`--history`; empty otherwise).
    log: RoomLog,
    /// The cursor at which each user first joined it (`--history` only): a client that
    /// has no cursor yet is owed everything since.
    since: HashMap<Arc<str>, u64>,
}

/// What one room has carried.
#[derive(Default)]
struct RoomCounters {
    messages: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
}

/// One room as `GET /admin/rooms` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoomReport {
    /// Connections in the room now.
    pub members: usize,
    /// Messages sent to it, and deliveries made, dropped and duplicated by faults.
    pub messages: u64,
    pub deliveries: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

/// Room name -> the room.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
    /// The last cursor given to a message, in any room (taken under the rooms' lock, so
    /// every member is sent a room's messages in cursor order).
    cursor: AtomicU64,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `user` missed in its rooms after `cursor` (without one: since it first joined
    /// each), in cursor order: each room's
    /// messages up to the cursor it joined at (what came later went to it live).
    fn missed(
        &self,
        rooms: &[(String, u64)],
        cursor: Option<u64>,
        user: &str,
        limits: store::HistoryLimits,
    ) -> Vec<Utf8Bytes> {
        let all = self.lock();
        let mut missed: Vec<(u64, Utf8Bytes)> = rooms
            .iter()
            .filter_map(|(name, joined)| Some((all.get(name)?, *joined)))
            .flat_map(|(room, joined)| {
                let first = || room.since.get(user).copied().unwrap_or(joined);
                room.log
                    .after(cursor.unwrap_or_else(first), user, limits)
                    .take_while(move |&(c, _)| c <= joined)
            })
            .collect();
        missed.sort_unstable_by_key(|&(cursor, _)| cursor);
        missed.into_iter().map(|(_, frame)| frame).collect()
    }

    /// Adds a member and answers it `joined` — under the lock, so no message of the room
    /// reaches it before that answer; returns the last cursor given (every later message of
    /// the room goes to the new member live).
    fn join(&self, room: &str, conn: u64, user: Arc<str>, outbox: Outbox, history: bool) -> u64 {
        let mut rooms = self.lock();
        let cursor = self.cursor.load(Ordering::Relaxed);
        let entry = rooms.entry(room.to_string()).or_default();
        if history {
            entry.since.entry(Arc::clone(&user)).or_insert(cursor);
        }
        let members = &mut entry.members;
        members.insert(conn, (user, outbox.clone()));
        let joined = serde_json::json!({"type": "joined", "room": room, "members": members.len()});
        let _ = outbox.send(Outgoing {
            message: Message::Text(joined.to_string().into()),
            at: Instant::now(),
            kind: "joined",
        });
        cursor
    }

    fn leave(&self, room: &str, conn: u64) {
        let mut rooms = self.lock();
        if let Some(room) = rooms.get_mut(room) {
            room.members.remove(&conn);
        }
    }

    /// Every room ever joined, by name.
    pub fn report(&self) -> std::collections::BTreeMap<String, RoomReport> {
        let rooms = self.lock();
        rooms
            .iter()
            .map(|(name, room)| {
                let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let stats = &room.stats;
                let report = RoomReport {
                    members: room.members.len(),
                    messages: count(&stats.messages),
                    deliveries: count(&stats.deliveries),
                    dropped: count(&stats.dropped),
                    duplicated: count(&stats.duplicated),
                };
                (name.clone(), report)
            })
            .collect()
    }
}

/// The commands of the protocol; other JSON (or non-JSON) frames are echoed.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Command {
    Login {
        user: String,
        #[serde(default)]
        token: String,
    },
    Join {
        room: String,
    },
    Msg {
        room: String,
        id: Value,
    },
    Ping,
    /// What was missed after the cursor `after` (`""` or none: everything kept).
    Sync {
        #[serde(default)]
        after: Value,
    },
}

struct Connection {
    id: u64,
    state: Arc<Shared>,
    /// Where its replies and deliveries queue, made by the first one: a channel holds a
    /// block of 32 slots from the start (~2.4 KB), which a connection that only pings never
    /// needs.
    outbox: OnceCell<Outbox>,
    /// The receiving end of `outbox` once made, until the connection's loop takes it.
    fresh_inbox: Cell<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    user: Option<Arc<str>>,
    rooms: Vec<String>,
    /// The last cursor of each room (in `rooms`' order) when this connection joined it.
    joined_at: Vec<u64>,
    /// The `sync_drop_live` fault: live deliveries to this client are dropped until then.
    drop_live_until: Option<Instant>,
}

/// A TCP (or TLS) connection whose frames carry a 4-byte big-endian length prefix, as
/// WebSocket messages (a frame that is UTF-8 is a text message); a close shuts it down.
pub fn framed<T: AsyncRead + AsyncWrite + Unpin>(
    tcp: T,
) -> impl Stream<Item = Result<Message, crate::codec::framing::FramingError>>
+ Sink<Message, Error = crate::codec::framing::FramingError>
+ Unpin {
    let codec = FrameCodec {
        framing: Framing::LengthPrefixed(TCP_PREFIX),
        max: MAX_FRAME,
    };
    Framed::new(tcp, codec)
        .map(|frame| {
            frame.map(|bytes| match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(bytes),
            })
        })
        .with_flat_map(|message: Message| {
            let frame = match message {
                Message::Text(text) => Some(Ok(Bytes::from(text))),
                Message::Binary(data) => Some(Ok(data)),
                _ => None,
            };
            futures_util::stream::iter(frame)
        })
}

/// The framing of the target's TCP listener.
pub const TCP_PREFIX: crate::codec::framing::LengthPrefix = crate::codec::framing::LengthPrefix {
    bytes: crate::codec::framing::Width::Four,
    endian: crate::codec::framing::Endian::Big,
    includes_header: false,
};

pub async fn serve_connection<S, E>(mut socket: S, state: Arc<Shared>, close: CancellationToken)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
{
    let metrics = &state.metrics;
    metrics.connections.inc();
    metrics.connections_total.inc();
    let mut inbox = None;
    let mut conn = Connection {
        id: state.rooms.next_id.fetch_add(1, Ordering::Relaxed),
        state: Arc::clone(&state),
        outbox: OnceCell::new(),
        fresh_inbox: Cell::new(None),
        user: None,
        rooms: Vec::new(),
        joined_at: Vec::new(),
        drop_live_until: None,
    };
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let idle_timeout = state.options.idle_timeout;
    let mut heard = Instant::now();
    loop {
        if inbox.is_none() {
            inbox = conn.fresh_inbox.take();
        }
        let next_release = queue.front().map(|o| state.faults.release_time(o.at));
        // Held by a stall (not just due later): listen for the stall being lifted. Only then,
        // since the bell is one lock every listening connection shares.
        let stalled = queue
            .front()
            .zip(next_release)
            .is_some_and(|(o, release)| release > o.at);
        let idle_at = idle_timeout.map(|t| heard + t);
        tokio::select! {
            _ = sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                metrics.idle_timeouts.inc();
                let goodbye = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "idle timeout".into(),
                }));
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), socket.send(goodbye)).await;
                break;
            }
            _ = close.cancelled() => {
                let goodbye = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "target closing connections".into(),
                }));
                let _ = socket.send(goodbye).await;
                break;
            }
            received = socket.next() => {
                let Some(Ok(message)) = received else { break };
                heard = Instant::now();
                metrics.frames_received.inc(kind(&message));
                match message {
                    Message::Text(text) => conn.on_text(text),
                    Message::Binary(data) => conn.queue(conn.outbox(), Message::Binary(data), Instant::now(), "echo"),
                    // Pings are answered by the WebSocket layer itself.
                    Message::Ping(_) => { metrics.frames_sent.inc("pong"); }
                    Message::Pong(_) => {}
                    Message::Close(_) => break,
                }
            }
            Some(out) = next_out(&mut inbox) => {
                if out.kind == "deliver" && conn.drop_live_until.is_some_and(|until| Instant::now() < until) {
                    metrics.sync_dropped.inc();
                } else {
                    // In time order: a delivery held back by the tail fault is overtaken.
                    let after = queue.iter().rposition(|o| o.at <= out.at).map_or(0, |i| i + 1);
                    queue.insert(after, out);
                }
            }
            // A stall lifted or shortened: the held frames' release time is read again.
            _ = state.faults.changed(), if stalled => {}
            _ = sleep_until(next_release.unwrap_or_else(Instant::now)), if next_release.is_some() => {
                // Re-check: a stall may have begun since the deadline was computed.
                let Some(front) = queue.front() else { continue };
                if state.faults.release_time(front.at) > Instant::now() { continue }
                let Some(out) = queue.pop_front() else { continue };
                if socket.send(out.message).await.is_err() {
                    break;
                }
                metrics.sent(out.kind);
            }
        }
    }
    for room in &conn.rooms {
        state.rooms.leave(room, conn.id);
    }
    metrics.connections.dec();
}

/// The next frame queued for the connection, once it has an outbox.
async fn next_out(inbox: &mut Option<mpsc::UnboundedReceiver<Outgoing>>) -> Option<Outgoing> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

impl Connection {
    fn outbox(&self) -> &Outbox {
        self.outbox.get_or_init(|| {
            let (outbox, inbox) = mpsc::unbounded_channel();
            self.fresh_inbox.set(Some(inbox));
            outbox
        })
    }

    /// Queues a reply to this connection, subject only to stalls.
    fn reply(&self, value: Value, kind: &'static str) {
        let text = Utf8Bytes::from(value.to_string());
        self.queue(self.outbox(), Message::Text(text), Instant::now(), kind);
    }

    fn queue(&self, outbox: &Outbox, message: Message, at: Instant, kind: &'static str) {
        let _ = outbox.send(Outgoing { message, at, kind });
    }

    fn error(&self, reason: &'static str) {
        self.state.metrics.errors.with_label_values(&[reason]).inc();
        self.reply(
            serde_json::json!({"type": "error", "reason": reason}),
            "error",
        );
    }

    fn on_text(&mut self, text: Utf8Bytes) {
        let command = match serde_json::from_str::<Command>(&text) {
            Ok(command) => command,
            // Not a command: echo it, as the plain echo server did.
            Err(_) => {
                self.queue(self.outbox(), Message::Text(text), Instant::now(), "echo");
                return;
            }
        };
        let metrics = &self.state.metrics;
        match command {
            Command::Login { user, token } => {
                let expected = self.state.options.token.as_deref();
                if expected.is_some_and(|t| t != token) {
                    metrics.logins.with_label_values(&["bad_token"]).inc();
                    self.reply(
                        serde_json::json!({"type": "login_error", "reason": "invalid token"}),
                        "login_error",
                    );
                    return;
                }
                metrics.logins.with_label_values(&["ok"]).inc();
                self.reply(
                    serde_json::json!({"type": "login_ok", "user": user}),
                    "login_ok",
                );
                self.user = Some(user.into());
            }
            Command::Join { room } => {
                let Some(user) = self.user.clone() else {
                    return self.error("not logged in");
                };
                let cursor = self.state.rooms.join(
                    &room,
                    self.id,
                    user,
                    self.outbox().clone(),
                    self.state.options.history.is_some(),
                );
                self.rooms.push(room);
                self.joined_at.push(cursor);
            }
            Command::Msg { room, id } => {
                let Some(user) = self.user.clone() else {
                    return self.error("not logged in");
                };
                if !self.rooms.contains(&room) {
                    return self.error("not a member of that room");
                }
                metrics.messages.inc();
                metrics.acks.inc();
                self.reply(serde_json::json!({"type": "ack", "id": id}), "ack");
                self.broadcast(&room, &user, &text);
            }
            Command::Sync { after } => self.sync(&after),
            Command::Ping => {
                let mut pong: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
                pong.insert("type".into(), "pong".into());
                self.reply(Value::Object(pong), "pong");
            }
        }
    }

    /// Sends the client what it missed after the cursor `after` in its rooms, as the sync
    /// faults have it, then `synced` with the count.
    fn sync(&mut self, after: &Value) {
        let state = Arc::clone(&self.state);
        let Some(user) = self.user.clone() else {
            return self.error("not logged in");
        };
        let Some(limits) = state.options.history else {
            return self.error("no history is kept (the target runs without --history)");
        };
        let Ok(after) = store::parse_cursor(after) else {
            return self.error("sync needs a cursor number in `after`");
        };
        let faults = state.faults.get();
        let rooms: Vec<(String, u64)> = (self.rooms.iter().cloned())
            .zip(self.joined_at.iter().copied())
            .collect();
        let missed = state.rooms.missed(&rooms, after, &user, limits);
        let sync = store::Sync::of(missed, faults.sync_truncate, faults.sync_twice);
        let metrics = &state.metrics;
        metrics.sync_requests.inc();
        metrics.sync_truncated.inc_by(sync.truncated);
        let count = sync.frames.len();
        let first = count - sync.duplicated as usize;
        for (i, frame) in sync.frames.into_iter().enumerate() {
            let kind = if i < first { SYNC } else { SYNC_AGAIN };
            self.queue(self.outbox(), Message::Text(frame), Instant::now(), kind);
        }
        self.reply(
            serde_json::json!({"type": "synced", "count": count}),
            "synced",
        );
        if !faults.sync_drop_live.is_zero() {
            self.drop_live_until = Some(crate::clock::later(Instant::now(), faults.sync_drop_live));
        }
    }

    /// Sends the message to every other member, as `deliver` with the sender in `from` (and
    /// its `cursor`, kept in the room's history, with `--history`). Under the rooms' lock,
    /// so each member gets a room's messages in cursor order.
    fn broadcast(&self, room: &str, user: &Arc<str>, text: &str) {
        let Ok(mut frame) = serde_json::from_str::<Map<String, Value>>(text) else {
            return;
        };
        frame.insert("type".into(), "deliver".into());
        frame.insert("from".into(), (**user).into());
        let metrics = &self.state.metrics;
        let mut rooms = self.state.rooms.lock();
        let Some(room_state) = rooms.get_mut(room) else {
            return;
        };
        let stats = Arc::clone(&room_state.stats);
        stats.messages.fetch_add(1, Ordering::Relaxed);
        let text = match self.state.options.history {
            Some(limits) => {
                let cursor = self.state.rooms.cursor.fetch_add(1, Ordering::Relaxed) + 1;
                frame.insert("cursor".into(), cursor.into());
                let text = Utf8Bytes::from(Value::Object(frame).to_string());
                let evicted = room_state
                    .log
                    .push(cursor, Arc::clone(user), text.clone(), limits);
                metrics.history_evicted.inc_by(evicted);
                text
            }
            None => Utf8Bytes::from(Value::Object(frame).to_string()),
        };
        let count = |counter: fn(&RoomCounters) -> &AtomicU64| {
            counter(&stats).fetch_add(1, Ordering::Relaxed);
        };
        let outboxes = (room_state.members.iter())
            .filter(|(id, _)| **id != self.id)
            .map(|(_, (_, outbox))| outbox);
        for outbox in outboxes {
            let connections = self.state.metrics.connections.get();
            let (copies, at) = self.state.faults.delivery(connections, room);
            match copies {
                0 => {
                    metrics.dropped.inc();
                    count(|s| &s.dropped);
                }
                2 => {
                    metrics.duplicated.inc();
                    count(|s| &s.duplicated);
                }
                _ => {}
            }
            for _ in 0..copies {
                metrics.deliveries.inc();
                count(|s| &s.deliveries);
                self.queue(outbox, Message::Text(text.clone()), at, "deliver");
            }
        }
    }
}
