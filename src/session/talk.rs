//! The driver of a [`Conversation`]: a thin loop that feeds it the socket's frames, the
//! desired load's changes and its own deadlines, and writes what it hands out. Generic over
//! any `Sink + Stream` of WebSocket messages, so the protocol state knows no socket.

use std::task::Poll;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{self, Message};

use super::connect::Connection;
use super::conversation::{Conversation, Ended, Outbound};
use super::wire::{Socket, close};
use super::{Context, User};
use crate::load::Desired;
use crate::metrics::{Count, DisconnectReason};

/// A connection being talked over: its socket and its conversation, in one allocation (the
/// state every connected user holds, apart from its task).
pub struct Live {
    pub socket: Socket,
    talk: Conversation,
}

impl Live {
    /// The connection's box is freed here, when this returns: a box moved out of lives until
    /// its binding goes out of scope, which in `run` would be the connection's end.
    fn new(user: &User, connection: Box<Connection>, unacked: Vec<(u64, Instant)>) -> Box<Live> {
        let Connection { socket, identity } = *connection;
        let talk = Conversation::new(user, identity, unacked);
        Box::new(Live { socket, talk })
    }
}

/// Talks over one connection until it ends, settles its books, and says why it ended. A
/// user that vanished (`offline: {how: vanish}`) gets its connection back, unclosed, to hold
/// while it is away.
pub async fn run(user: &mut User, connection: Box<Connection>) -> (Ended, Option<Box<Live>>) {
    let unacked = std::mem::take(&mut user.unacked).into_vec();
    let mut live = Live::new(user, connection, unacked);
    let Live { socket, talk } = &mut *live;
    let mut ended = drive(user, talk, socket).await;
    if ended.reason == DisconnectReason::Handover {
        ended.away = user.desired.borrow().load.network.handover.map(|h| h.gap);
    }
    user.unacked = talk
        .finish(user.desired.borrow().draining, ended.reason)
        .into_boxed_slice();
    let held = vanishes(user, &ended).then_some(live);
    (ended, held)
}

/// Whether this end is going away without a word: a handover, or a user going offline
/// by vanishing.
fn vanishes(user: &User, ended: &Ended) -> bool {
    ended.reason == DisconnectReason::Handover
        || ended.reason == DisconnectReason::Offline
            && user
                .ctx
                .settings
                .offline
                .is_some_and(|o| o.how == crate::session::settings::Away::Vanish)
}

async fn drive<S>(user: &User, talk: &mut Conversation, socket: &mut S) -> Ended
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    // The supervisor rings the user's slot when it stops the user or changes the desired
    // state: no watch registration (a lock every user shares) per loop turn. The timer is
    // created once per connection, not per frame.
    let mut watching = user.desired.clone();
    let sleep = sleep_until(talk.deadline());
    tokio::pin!(sleep);
    let ended = loop {
        // No local lives across the wait below unless it must: each is in every connected
        // user's task.
        {
            let wake = talk.deadline();
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
        }
        let step = tokio::select! {
            biased;
            _ = user.ticket.stopped() => Err(Ended::planned(DisconnectReason::ClientClose)),
            desired = changed(user, &mut watching) => talk.on_desired(&desired),
            frame = socket.next() => match frame {
                None => Err(Ended::failed(
                    DisconnectReason::Reset,
                    "the connection ended without a close frame",
                )),
                Some(Err(err)) => Err(failure(&err)),
                Some(Ok(frame)) => talk.on_frame(&frame),
            },
            _ = &mut sleep => talk.on_tick(Instant::now()),
        };
        if let Err(ended) = step {
            break talk.while_silent(ended);
        }
        if let Err(ended) = flush(&user.ctx, talk, socket).await {
            break talk.while_silent(ended);
        }
    };
    // A silent user the server timed out has no connection left to close. What arrives
    // before the server answers the close is read as usual (a delivery still on its way
    // counts, a sync's second copy too): the books close after it.
    if ended.is_planned() && ended.away.is_none() && !vanishes(user, &ended) {
        // Boxed, as the slow write below: its timer is needed only at the end.
        Box::pin(close(socket, |frame| {
            let _ = talk.on_frame(frame);
        }))
        .await;
    }
    ended
}

/// The group's desired state, once it changed since `desired` last saw it (the supervisor
/// rings the user's slot when it does).
async fn changed(user: &User, desired: &mut watch::Receiver<Desired>) -> Desired {
    std::future::poll_fn(|cx| {
        user.slot().listen(cx);
        match desired.has_changed() {
            Ok(true) => Poll::Ready(desired.borrow_and_update().clone()),
            // Changed, or the sender is gone: the supervisor ended, and stops every user.
            _ => Poll::Pending,
        }
    })
    .await
}

/// Writes what the conversation has due, in order: at once while the socket takes it (the
/// usual case), and what it cannot take at once within the write timeout. That wait is
/// boxed: inline, its timer and frame would sit in every connected user's state.
async fn flush<S>(ctx: &Context, talk: &mut Conversation, socket: &mut S) -> Result<(), Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let stuck = std::future::poll_fn(|cx| Poll::Ready(flush_now(ctx, talk, socket, cx))).await?;
    match stuck {
        None => Ok(()),
        Some(stuck) => Box::pin(flush_slowly(ctx, talk, socket, stuck)).await,
    }
}

/// A write the socket could not finish at once: the frame if it was not taken yet, and what
/// the frame was (boxed when it happens, so the flush's state stays a few pointers).
struct Stuck {
    frame: Option<Message>,
    written: Written,
}

/// What a frame written by [`flush`] was, for what is recorded after it left.
enum Written {
    Heartbeat,
    Refresh,
    Reply,
    Message {
        seq: u64,
        scheduled: Instant,
        size: usize,
        resent: bool,
    },
}

impl Written {
    /// The frame to write for `outbound`, and what it is.
    fn of(outbound: Outbound) -> (Message, Written) {
        match outbound {
            Outbound::Heartbeat(frame) => (frame, Written::Heartbeat),
            Outbound::Refresh(frame) => (frame, Written::Refresh),
            Outbound::Reply(frame) => (frame, Written::Reply),
            Outbound::Message {
                frame,
                seq,
                scheduled,
                resent,
            } => {
                let size = frame.len();
                let written = Written::Message {
                    seq,
                    scheduled,
                    size,
                    resent,
                };
                (frame, written)
            }
        }
    }

    /// Records that the frame left.
    fn record(self, ctx: &Context, talk: &mut Conversation) {
        match self {
            Written::Heartbeat => {}
            Written::Refresh => ctx.meter().add(Count::TokenRefreshes, 1),
            Written::Reply => ctx.meter().add(Count::Replies, 1),
            Written::Message {
                seq,
                scheduled,
                size,
                resent,
            } => talk.sent(seq, scheduled, size, resent),
        }
    }
}

/// Writes what is due while the socket takes it without waiting; the first write it cannot
/// finish is handed back.
fn flush_now<S>(
    ctx: &Context,
    talk: &mut Conversation,
    socket: &mut S,
    cx: &mut std::task::Context<'_>,
) -> Result<Option<Box<Stuck>>, Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while let Some(outbound) = talk.next_outbound()? {
        let (frame, written) = Written::of(outbound);
        let mut frame = Some(frame);
        if !write_now(socket, &mut frame, cx).map_err(|err| failure(&err))? {
            return Ok(Some(Box::new(Stuck { frame, written })));
        }
        written.record(ctx, talk);
    }
    Ok(None)
}

/// Finishes `stuck` within the write timeout, then writes the rest as [`flush`] does.
async fn flush_slowly<S>(
    ctx: &Context,
    talk: &mut Conversation,
    socket: &mut S,
    stuck: Box<Stuck>,
) -> Result<(), Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut next = Some(stuck);
    while let Some(stuck) = next.take() {
        let Stuck { frame, written } = *stuck;
        write_within(ctx, socket, frame).await?;
        written.record(ctx, talk);
        next = std::future::poll_fn(|cx| Poll::Ready(flush_now(ctx, talk, socket, cx))).await?;
    }
    Ok(())
}

/// Hands `frame` (if not taken yet) to the socket and flushes it, without waiting: true when
/// both are done. What is left for [`write_within`] stays in `frame`.
fn write_now<S>(
    socket: &mut S,
    frame: &mut Option<Message>,
    cx: &mut std::task::Context<'_>,
) -> Result<bool, tungstenite::Error>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    if frame.is_some() {
        match socket.poll_ready_unpin(cx) {
            Poll::Pending => return Ok(false),
            Poll::Ready(ready) => ready?,
        }
        if let Some(frame) = frame.take() {
            socket.start_send_unpin(frame)?;
        }
    }
    Ok(socket.poll_flush_unpin(cx)?.is_ready())
}

/// Finishes a write the socket could not take at once, within the write timeout.
async fn write_within<S>(ctx: &Context, socket: &mut S, frame: Option<Message>) -> Result<(), Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let finish = async {
        if let Some(frame) = frame {
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    match timeout(ctx.write_timeout, finish).await {
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

fn failure(err: &tungstenite::Error) -> Ended {
    let reason = match err {
        // The user's weak link handed over: no failure of the server's.
        tungstenite::Error::Io(io) if super::shaper::is_handover(io) => {
            return Ended::planned(DisconnectReason::Handover);
        }
        // A malformed frame on a raw stream (see `wire::Socket`).
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            DisconnectReason::Protocol
        }
        tungstenite::Error::Io(_)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed => DisconnectReason::Reset,
        _ => DisconnectReason::Protocol,
    };
    Ended::failed(reason, err.to_string())
}
