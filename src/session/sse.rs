//! Server-Sent Events targets (`sse+http://`, `sse+https://`): a user holds one event stream
//! (a GET answered `text/event-stream`, read by `eventsource-stream`) whose events' data are
//! the frames it reads, and sends each frame as the body of an HTTP request
//! (`scenario.publish`) on a keep-alive connection of its own, whose answers — in order, one
//! per frame — are frames it reads too: acks come from the events or from the answers, as the
//! scenario's rules say. The stream resumes with the last event id seen (`Last-Event-ID`),
//! after the server's `retry:` if it gave one ([`Resume`], kept across connections). Seen by
//! the rest of the session as a WebSocket would be: a `Sink + Stream` of messages.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Sink, Stream, StreamExt};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::metrics::{Count, Metrics};

/// Frames waiting for the publish connection beyond this end the connection: the server
/// answers slower than the user sends.
const MAX_WAITING: usize = 1024;

/// The largest publish answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What a user keeps of its event stream across connections: the last event id seen (sent
/// back as `Last-Event-ID`) and the reconnection time the server asked for (`retry:`).
#[derive(Debug, Default)]
pub struct Resume {
    last_event_id: Mutex<Option<String>>,
    retry: Mutex<Option<Duration>>,
}

impl Resume {
    pub fn last_event_id(&self) -> Option<String> {
        self.last_event_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server's `retry:`, the least wait before the next connect.
    pub fn retry(&self) -> Option<Duration> {
        *self.retry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens a keep-alive HTTP/1.1 connection for publishing (TCP, TLS for `https`).
pub type Dial = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<SendRequest<Full<Bytes>>, String>> + Send>>
        + Send
        + Sync,
>;

/// The request each frame is published in, rendered for this connection.
pub struct PublishRequest {
    pub uri: http::Uri,
    pub method: http::Method,
    pub headers: http::HeaderMap,
}

type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<hyper::Error>>> + Send,
    >,
>;

type Answer = Pin<
    Box<
        dyn Future<
                Output = (
                    Option<SendRequest<Full<Bytes>>>,
                    Result<(http::StatusCode, Bytes), String>,
                ),
            > + Send,
    >,
>;

/// One user's SSE connection: its event stream and its publisher.
pub struct Sse {
    events: Events,
    resume: Arc<Resume>,
    request: Arc<PublishRequest>,
    dial: Arc<Dial>,
    /// The publish connection while idle (taken by the request in flight).
    sender: Option<SendRequest<Full<Bytes>>>,
    waiting: VecDeque<Bytes>,
    in_flight: Option<Answer>,
    /// A close was sent: the stream ends (an event stream has no close to wait for).
    closed: bool,
    metrics: Arc<Metrics>,
    group: usize,
}

impl Sse {
    /// The connection reading `body` (a 200 `text/event-stream` answer) and publishing with
    /// `request` over connections `dial` opens.
    pub fn new(
        body: Incoming,
        resume: Arc<Resume>,
        request: PublishRequest,
        dial: Dial,
        metrics: Arc<Metrics>,
        group: usize,
    ) -> Sse {
        let data = BodyStream::new(body).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(err) => Some(Err(err)),
            }
        });
        Sse {
            events: Box::pin(data.eventsource()),
            resume,
            request: Arc::new(request),
            dial: Arc::new(dial),
            sender: None,
            waiting: VecDeque::new(),
            in_flight: None,
            closed: false,
            metrics,
            group,
        }
    }

    /// Sends the next waiting frame, when none is in flight.
    fn publish_next(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(body) = self.waiting.pop_front() else {
            return;
        };
        let (request, dial, sender) = (
            Arc::clone(&self.request),
            Arc::clone(&self.dial),
            self.sender.take(),
        );
        self.in_flight = Some(Box::pin(async move {
            let mut sender = match sender {
                Some(sender) if !sender.is_closed() => sender,
                _ => match dial().await {
                    Ok(sender) => sender,
                    Err(err) => return (None, Err(err)),
                },
            };
            let mut http = http::Request::new(Full::new(body));
            *http.method_mut() = request.method.clone();
            *http.uri_mut() = request.uri.clone();
            *http.headers_mut() = request.headers.clone();
            let answer = async {
                sender.ready().await.map_err(|e| e.to_string())?;
                let response = sender.send_request(http).await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                Ok((status, body))
            }
            .await;
            (Some(sender), answer)
        }));
    }
}

impl Stream for Sse {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(None);
        }
        loop {
            this.publish_next();
            let Some(in_flight) = &mut this.in_flight else {
                break;
            };
            let Poll::Ready((sender, answer)) = in_flight.as_mut().poll(cx) else {
                break;
            };
            this.in_flight = None;
            this.sender = sender;
            match answer {
                Ok((status, body)) if status.is_success() => {
                    return Poll::Ready(Some(Ok(text_or_binary(body))));
                }
                Ok((status, _)) => {
                    // Refused: the frame's ack never comes, so it times out as lost would.
                    tracing::debug!(%status, "publish refused");
                    this.metrics.group(this.group).add(Count::PublishRefused, 1);
                }
                Err(err) => {
                    return Poll::Ready(Some(Err(WsError::Io(io::Error::other(format!(
                        "publishing to {}: {err}",
                        this.request.uri
                    ))))));
                }
            }
        }
        match this.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                if !event.id.is_empty() {
                    *this
                        .resume
                        .last_event_id
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(event.id);
                }
                if let Some(retry) = event.retry {
                    *this.resume.retry.lock().unwrap_or_else(|e| e.into_inner()) = Some(retry);
                }
                Poll::Ready(Some(Ok(text_or_binary(Bytes::from(event.data)))))
            }
            Poll::Ready(Some(Err(EventStreamError::Transport(err)))) => {
                Poll::Ready(Some(Err(WsError::Io(io::Error::other(err)))))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(WsError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the event stream: {err}"),
            ))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes as a message: text if they are UTF-8, else binary.
pub(super) fn text_or_binary(data: Bytes) -> Message {
    match Utf8Bytes::try_from(data.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(data),
    }
}

impl Sink<Message> for Sse {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    /// A frame waits for the publish connection (sent when the stream is next polled, as
    /// the session always does); a close ends the stream; pings have no meaning here.
    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        let body = match message {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(data) => data,
            Message::Close(_) => {
                this.closed = true;
                return Ok(());
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        if this.waiting.len() >= MAX_WAITING {
            return Err(WsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{MAX_WAITING} frames wait to be published: {} answers slower than they are sent",
                    this.request.uri
                ),
            )));
        }
        this.waiting.push_back(body);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}
