//! What the rest of `session` shares about the wire: the socket — a WebSocket, or frames cut
//! from a plain TCP/TLS stream, seen alike as WebSocket messages — how a connection attempt
//! fails (with a detail for a person), and closing politely. No protocol state lives here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, StreamExt, ready};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_util::codec::Framed;

use crate::codec::framing::{FrameCodec, Framing, FramingError};
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

/// A user's connection, as a `Sink + Stream` of WebSocket messages whatever it runs over.
pub struct Socket(Transport);

enum Transport {
    /// Each WebSocket message is a frame.
    WebSocket(WebSocketStream<Stream>),
    /// A framed byte stream carried in WebSocket messages (MQTT over WebSocket: a packet may
    /// span messages, or share one): frames are cut again from the messages' bytes. The
    /// cutting state is boxed so that plain WebSocket users, the common case, do not carry it.
    Recut {
        ws: WebSocketStream<Stream>,
        cut: Box<(FrameCodec, BytesMut)>,
    },
    /// Plain TCP or TLS, cut into frames by the scenario's framing (`tcp://`, `tls://`).
    /// WebSocket control messages have no meaning here: pings are dropped, and a close
    /// shuts the stream down.
    Bytes {
        framed: Framed<Stream, FrameCodec>,
        shutting_down: bool,
    },
    /// A Server-Sent Events stream and its publisher (`sse+http://`).
    Sse(Box<super::sse::Sse>),
}

/// A raw stream's read buffer starts this small and grows only for big frames.
const STREAM_READ_BUFFER: usize = 256;

impl Socket {
    /// The local address of the connection, where there is one of this user's own.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        match &self.0 {
            Transport::WebSocket(ws) | Transport::Recut { ws, .. } => ws.get_ref().local_ip(),
            Transport::Bytes { framed, .. } => framed.get_ref().local_ip(),
            Transport::Sse(_) => None,
        }
    }

    /// A WebSocket; with `framing`, its messages carry a framed byte stream (frames of at
    /// most `max` bytes).
    pub fn websocket(ws: WebSocketStream<Stream>, framing: Option<Framing>, max: usize) -> Socket {
        Socket(match framing {
            None => Transport::WebSocket(ws),
            Some(framing) => Transport::Recut {
                ws,
                cut: Box::new((FrameCodec { framing, max }, BytesMut::new())),
            },
        })
    }

    /// An event stream and its publisher.
    pub fn sse(sse: super::sse::Sse) -> Socket {
        Socket(Transport::Sse(Box::new(sse)))
    }

    /// A plain TCP or TLS stream cut by `framing` into frames of at most `max` bytes.
    pub fn stream(stream: Stream, framing: Framing, max: usize) -> Socket {
        Socket(Transport::Bytes {
            framed: Framed::with_capacity(stream, FrameCodec { framing, max }, STREAM_READ_BUFFER),
            shutting_down: false,
        })
    }
}

/// A framing error, as the WebSocket errors the session handles: too long is a capacity
/// error, malformed is invalid data (both end the connection as `protocol`).
fn framing_failure(err: FramingError) -> WsError {
    match err {
        FramingError::TooLong { size, max } => WsError::Capacity(CapacityError::MessageTooLong {
            size,
            max_size: max,
        }),
        FramingError::Malformed(detail) => WsError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed frame: {detail}"),
        )),
        FramingError::Io(err) => WsError::Io(err),
    }
}

impl futures_util::Stream for Socket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            Transport::WebSocket(ws) => ws.poll_next_unpin(cx),
            Transport::Recut { ws, cut } => loop {
                let (codec, buffer) = &mut **cut;
                match codec.framing.cut(buffer, codec.max) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(Message::Binary(frame)))),
                    Ok(None) => {}
                    Err(err) => return Poll::Ready(Some(Err(framing_failure(err)))),
                }
                match ready!(ws.poll_next_unpin(cx)) {
                    Some(Ok(Message::Binary(data))) => buffer.extend_from_slice(&data),
                    Some(Ok(Message::Text(text))) => buffer.extend_from_slice(text.as_bytes()),
                    other => return Poll::Ready(other),
                }
            },
            Transport::Bytes { framed, .. } => framed
                .poll_next_unpin(cx)
                .map(|item| item.map(|frame| frame.map(Message::Binary).map_err(framing_failure))),
            Transport::Sse(sse) => sse.poll_next_unpin(cx),
        }
    }
}

impl Sink<Message> for Socket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.get_mut().0 {
            Transport::WebSocket(ws) | Transport::Recut { ws, .. } => ws.poll_ready_unpin(cx),
            Transport::Bytes { framed, .. } => {
                SinkExt::<Bytes>::poll_ready_unpin(framed, cx).map_err(framing_failure)
            }
            Transport::Sse(sse) => sse.poll_ready_unpin(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        match &mut self.get_mut().0 {
            Transport::WebSocket(ws) => ws.start_send_unpin(message),
            // Each frame delimited as the framing says (a line ends in `\n`), one per message.
            Transport::Recut { ws, cut } => {
                let framing = cut.0.framing;
                let delimited = |data: &[u8]| {
                    let mut out = BytesMut::with_capacity(data.len() + 1);
                    framing.put(data, &mut out).map(|()| out.freeze())
                };
                let message = match message {
                    Message::Text(text) => super::sse::text_or_binary(
                        delimited(text.as_bytes()).map_err(framing_failure)?,
                    ),
                    Message::Binary(data) => {
                        Message::Binary(delimited(&data).map_err(framing_failure)?)
                    }
                    other => other,
                };
                ws.start_send_unpin(message)
            }
            Transport::Bytes {
                framed,
                shutting_down,
            } => match message {
                Message::Text(text) => framed.start_send_unpin(Bytes::from(text)),
                Message::Binary(data) => framed.start_send_unpin(data),
                Message::Close(_) => {
                    *shutting_down = true;
                    Ok(())
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
            }
            .map_err(framing_failure),
            Transport::Sse(sse) => sse.start_send_unpin(message),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.get_mut().0 {
            Transport::WebSocket(ws) | Transport::Recut { ws, .. } => ws.poll_flush_unpin(cx),
            // A close sent on a raw stream is its shutdown (FIN), after what was written.
            Transport::Bytes {
                framed,
                shutting_down: true,
            } => SinkExt::<Bytes>::poll_close_unpin(framed, cx).map_err(framing_failure),
            Transport::Bytes { framed, .. } => {
                SinkExt::<Bytes>::poll_flush_unpin(framed, cx).map_err(framing_failure)
            }
            Transport::Sse(sse) => sse.poll_flush_unpin(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.get_mut().0 {
            Transport::WebSocket(ws) | Transport::Recut { ws, .. } => ws.poll_close_unpin(cx),
            Transport::Bytes { framed, .. } => {
                SinkExt::<Bytes>::poll_close_unpin(framed, cx).map_err(framing_failure)
            }
            Transport::Sse(sse) => sse.poll_close_unpin(cx),
        }
    }
}

/// A client connection, plain or TLS; the TLS session is boxed so plain sockets stay small,
/// and so are the permessage-deflate layer of a WebSocket that negotiated it and the weak
/// link of a shaped user.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Deflate(Box<super::deflate::Deflated<Stream>>),
    /// Behind a weak link (`network:`).
    Shaped(Box<super::shaper::Shaped<Stream>>),
}

impl Stream {
    /// The local address of the TCP connection below.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Stream::Plain(s) => s.local_addr().ok().map(|a| a.ip()),
            Stream::Tls(s) => s.get_ref().0.local_addr().ok().map(|a| a.ip()),
            Stream::Deflate(s) => s.get_ref().local_ip(),
            Stream::Shaped(s) => s.get_ref().local_ip(),
        }
    }
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
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Shaped(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Shaped(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Shaped(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Shaped(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A failed connection attempt: the counted result and what exactly happened, for a person.
#[derive(Debug)]
pub struct ConnectFailure {
    pub result: ConnectResult,
    pub detail: String,
    /// The HTTP status of a refused upgrade.
    pub status: Option<u16>,
    /// How long the server asked us to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ConnectFailure {
    pub fn new(result: ConnectResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            detail: detail.into(),
            status: None,
            retry_after: None,
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
///
/// A server's close with a code no endpoint may send (1005, 1006, 1015, or outside
/// 1000-4999) reaches us from tungstenite rewritten as `1002 "Protocol violation"`, its own
/// code gone; the sample says so rather than blame the server for a 1002 it never sent.
pub fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame)
            if frame.code == CloseCode::Protocol && frame.reason == "Protocol violation" =>
        {
            "a close code a server may not send (1005, 1006, 1015 or outside 1000-4999; the WebSocket library reports it as 1002)".into()
        }
        Some(frame) => format!(
            "close code {} \"{}\"",
            u16::from(frame.code),
            truncate(&frame.reason, 120)
        ),
        None => "no close code".into(),
    }
}

/// Sends a close frame and waits (bounded) for the server to answer it, handing `read`
/// every frame the server sent before its answer: what was already on its way was
/// delivered, and counts.
pub async fn close<S, E>(socket: &mut S, mut read: impl FnMut(&Message))
where
    S: Sink<Message> + futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = timeout(CLOSE_TIMEOUT, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(frame)) = socket.next().await {
                read(&frame);
            }
        }
    })
    .await;
}
