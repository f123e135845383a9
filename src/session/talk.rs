//! The driver of a [`Conversation`]: a thin loop that feeds it the socket's frames, the
//! desired load's changes and its own deadlines, and writes what it hands out. Generic over
//! any `Sink + Stream` of WebSocket messages, so the protocol state knows no socket.

use std::sync::Arc;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::WatchStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::conversation::{Conversation, Ended, Outbound};
use super::wire::close;
use super::{Context, User};
use crate::metrics::{Count, DisconnectReason};
use crate::scenario::Identity;

/// Talks over one connection until it ends, settles its books, and says why it ended. A
/// user that vanished (`offline: {how: vanish}`) gets its socket back, unclosed, to hold
/// while it is away.
pub async fn run<S>(user: &mut User, mut socket: S, identity: Identity) -> (Ended, Option<S>)
where
    S: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin,
{
    let unacked = std::mem::take(&mut user.unacked);
    let mut talk = Conversation::new(user, identity, unacked);
    let mut ended = drive(user, &mut talk, &mut socket).await;
    if ended.reason == DisconnectReason::Handover {
        ended.away = user.desired.borrow().load.network.handover.map(|h| h.gap);
    }
    user.unacked = talk.finish(user.desired.borrow().draining, ended.reason);
    let held = vanishes(user, &ended).then_some(socket);
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
    let ctx = Arc::clone(&user.ctx);
    // Created once per connection, not per frame: re-creating them on every loop turn
    // re-registers a timer and takes the watch channel's lock, which every user shares.
    let cancelled = user.cancel.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let mut changes = WatchStream::from_changes(user.desired.clone());
    let sleep = sleep_until(talk.deadline());
    tokio::pin!(sleep);
    let ended = loop {
        let wake = talk.deadline();
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        let step = tokio::select! {
            biased;
            _ = &mut cancelled => Err(Ended::planned(DisconnectReason::ClientClose)),
            Some(desired) = changes.next() => talk.on_desired(&desired),
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
        if let Err(ended) = flush(&ctx, talk, socket).await {
            break talk.while_silent(ended);
        }
    };
    // A silent user the server timed out has no connection left to close. What arrives
    // before the server answers the close is read as usual (a delivery still on its way
    // counts, a sync's second copy too): the books close after it.
    if ended.is_planned() && ended.away.is_none() && !vanishes(user, &ended) {
        close(socket, |frame| {
            let _ = talk.on_frame(frame);
        })
        .await;
    }
    ended
}

/// Writes what the conversation has due, in order.
async fn flush<S>(ctx: &Context, talk: &mut Conversation, socket: &mut S) -> Result<(), Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while let Some(outbound) = talk.next_outbound()? {
        match outbound {
            Outbound::Heartbeat(frame) => write(ctx, socket, frame).await?,
            Outbound::Refresh(frame) => {
                write(ctx, socket, frame).await?;
                ctx.meter().add(Count::TokenRefreshes, 1);
            }
            Outbound::Reply(frame) => {
                write(ctx, socket, frame).await?;
                ctx.meter().add(Count::Replies, 1);
            }
            Outbound::Message {
                frame,
                seq,
                scheduled,
                resent,
            } => {
                let size = frame.len();
                write(ctx, socket, frame).await?;
                talk.sent(seq, scheduled, size, resent);
            }
        }
    }
    Ok(())
}

async fn write<S>(ctx: &Context, socket: &mut S, frame: Message) -> Result<(), Ended>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
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
