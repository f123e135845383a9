//! `wsfleet target --lean`: the same IM protocol with the least memory per connection, for
//! capacity rehearsals where one machine hosts both sides. WebSockets are accepted straight
//! from TCP by tokio-tungstenite with the fleet's small buffers — no HTTP server and no
//! upgrade state per connection, the handshake's buffers boxed and freed once it is done —
//! and talk through [`im::serve_connection`] like any other. `/metrics` and the admin API are
//! served apart (`--admin-listen`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::Bytes;
use futures_util::{Sink, Stream, ready};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{self as ts, http};
use tokio_util::sync::CancellationToken;

use super::{Shared, im};
use crate::codec::framing::MAX_FRAME;

/// Accepts WebSockets at `/ws` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<Shared>, shutdown: CancellationToken) {
    super::accept_each(listener, state, shutdown, connection).await;
}

async fn connection(tcp: TcpStream, state: Arc<Shared>, close: CancellationToken) {
    let config = crate::session::ws_config(MAX_FRAME);
    // Boxed: inline, the handshake's state would stay in the task for as long as it lives.
    let accepted = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        only_ws,
        Some(config),
    ))
    .await;
    match accepted {
        Ok(ws) => im::serve_connection(Axum(ws), state, close).await,
        Err(err) => {
            state.metrics.refused.inc();
            tracing::debug!(%err, "WebSocket handshake failed");
        }
    }
}

/// The lean listener serves WebSockets at `/ws` only. (The signature is tungstenite's
/// handshake callback's.)
#[allow(clippy::result_large_err)]
fn only_ws(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == "/ws" {
        return Ok(response);
    }
    let mut refused = ErrorResponse::new(Some(
        "the lean target serves WebSockets at /ws only; /metrics is on --admin-listen\n".into(),
    ));
    *refused.status_mut() = http::StatusCode::NOT_FOUND;
    Err(refused)
}

/// A tokio-tungstenite WebSocket seen as axum's, which the IM connection speaks. Payloads
/// are moved, not copied (text is checked as UTF-8 on the way, as axum does).
struct Axum(WebSocketStream<TcpStream>);

fn from_tungstenite(message: ts::Message) -> Option<Message> {
    Some(match message {
        ts::Message::Text(text) => Message::Text(utf8(Bytes::from(text))?),
        ts::Message::Binary(data) => Message::Binary(data),
        ts::Message::Ping(data) => Message::Ping(data),
        ts::Message::Pong(data) => Message::Pong(data),
        ts::Message::Close(frame) => Message::Close(frame.and_then(|f| {
            Some(CloseFrame {
                code: f.code.into(),
                reason: utf8(Bytes::from(f.reason))?,
            })
        })),
        ts::Message::Frame(_) => return None,
    })
}

fn into_tungstenite(message: Message) -> ts::Message {
    // axum's text is UTF-8 already: the lossy copy is never taken.
    let text = |text: Utf8Bytes| {
        let bytes = Bytes::from(text);
        ts::Utf8Bytes::try_from(bytes.clone())
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).as_ref().into())
    };
    match message {
        Message::Text(t) => ts::Message::Text(text(t)),
        Message::Binary(data) => ts::Message::Binary(data),
        Message::Ping(data) => ts::Message::Ping(data),
        Message::Pong(data) => ts::Message::Pong(data),
        Message::Close(frame) => ts::Message::Close(frame.map(|f| ts::protocol::CloseFrame {
            code: f.code.into(),
            reason: text(f.reason),
        })),
    }
}

fn utf8(bytes: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(bytes).ok()
}

impl Stream for Axum {
    type Item = Result<Message, ts::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match ready!(Pin::new(&mut self.0).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                Some(Ok(message)) => {
                    if let Some(message) = from_tungstenite(message) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
            }
        }
    }
}

impl Sink<Message> for Axum {
    type Error = ts::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ts::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), ts::Error> {
        Pin::new(&mut self.0).start_send(into_tungstenite(item))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ts::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ts::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
