//! What the rest of `session` shares about the wire: the socket type, how a connection attempt
//! fails (with a detail for a person), and closing a WebSocket politely. No protocol state
//! lives here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

use crate::failures::truncate;
use crate::metrics::ConnectResult;

/// How long a user waits for the server's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub type Socket = WebSocketStream<Stream>;

/// A client connection, plain or TLS; the TLS session is boxed so plain sockets stay small.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A failed connection attempt: the counted result and what exactly happened, for a person.
#[derive(Debug)]
pub struct ConnectFailure {
    pub result: ConnectResult,
    pub detail: String,
}

impl ConnectFailure {
    pub fn new(result: ConnectResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            detail: detail.into(),
        }
    }
}

impl From<ConnectResult> for ConnectFailure {
    fn from(result: ConnectResult) -> Self {
        Self::new(result, result.as_str())
    }
}

/// An I/O error while `doing` something, classified.
pub fn io_failure(err: &std::io::Error, doing: &str) -> ConnectFailure {
    ConnectFailure::new(io_result(err), format!("{doing}: {err}"))
}

fn io_result(err: &std::io::Error) -> ConnectResult {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => ConnectResult::Refused,
        // connect() without a free ephemeral port for this destination.
        ErrorKind::AddrNotAvailable => ConnectResult::PortsExhausted,
        ErrorKind::TimedOut => ConnectResult::Timeout,
        _ if is_tls_error(err) => ConnectResult::Tls,
        _ => ConnectResult::Io,
    }
}

fn is_tls_error(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// `1008 "policy violation"`, or `no close frame`.
pub fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) => format!(
            "close code {} \"{}\"",
            u16::from(frame.code),
            truncate(&frame.reason, 120)
        ),
        None => "no close code".into(),
    }
}

/// Sends a close frame and waits (bounded) for the server to answer it.
pub async fn close<S>(socket: &mut S)
where
    S: Sink<Message> + futures_util::Stream + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while socket.next().await.is_some() {}
        }
    })
    .await;
}
