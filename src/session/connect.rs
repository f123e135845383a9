//! Opening a user's connection: TCP connect, TLS, HTTP upgrade (timed together as the
//! handshake), then the scenario's login steps. Every failure maps to a [`ConnectResult`].

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use url::Url;

use super::Context;
use super::deflate::Deflated;
use super::sse::{Dial, PublishRequest, Sse};
use super::wire::{ConnectFailure, Socket, Stream, close, describe_close, io_failure};
use super::{is_sse, is_websocket, shaper, upgrade};
use crate::clock;
use crate::failures::truncate;
use crate::load::Desired;
use crate::metrics::{ConnectResult, Count, Latency, Phase};
use crate::scenario::Identity;
use crate::scenario::matcher::Frame;
use crate::scenario::reading::Meaning;
use crate::scenario::template::Template;
use crate::topology::Topology;

/// Connects and logs this instance's user `local` in. The handshake time is recorded on
/// success.
pub async fn open(
    ctx: &Context,
    local: u32,
    topology: Topology,
    desired: &watch::Receiver<Desired>,
) -> Result<Box<Connection>, ConnectFailure> {
    let mut identity = ctx
        .scenario
        .identity(ctx.global_id(local, topology), topology);
    identity.last_seen = Some(ctx.last_seen(local))
        .filter(|c| !c.is_empty())
        .map(Box::new);
    let url = match &ctx.scenario.url {
        Some(template) => Url::parse(&template.render(&identity.values(
            ctx.target.as_str(),
            0,
            clock::now_micros(),
            0,
        )))
        .map_err(|err| {
            ConnectFailure::new(
                ConnectResult::Protocol,
                format!("the url template gives no URL: {err}"),
            )
        })?,
        None => ctx.target.clone(),
    };
    let started = Instant::now();
    let mut socket = timeout(
        ctx.settings.connect_timeout,
        handshake(ctx, local, &url, &identity, desired),
    )
    .await
    .map_err(|_| {
        ConnectFailure::new(
            ConnectResult::Timeout,
            format!(
                "no WebSocket from {url} within connect_timeout ({})",
                humantime::format_duration(ctx.settings.connect_timeout)
            ),
        )
    })??;
    ctx.meter().observe(Latency::Connect, started.elapsed());

    let login_started = Instant::now();
    if let Err(failure) = login(ctx, &mut socket, &identity).await {
        close(&mut socket, |_| {}).await;
        return Err(failure);
    }
    if !ctx.scenario.login.is_empty() {
        ctx.meter().observe(Latency::Login, login_started.elapsed());
    }
    ctx.meter().connect_result(ConnectResult::Ok).inc();
    Ok(Box::new(Connection { socket, identity }))
}

/// A logged-in connection and who it is logged in as. Boxed by [`open`]: it is moved from the
/// connect to the conversation and back, and every future that holds it by value would
/// otherwise carry its ~430 bytes (an `async fn` keeps a copy of each argument it moves).
pub struct Connection {
    pub socket: Socket,
    pub identity: Identity,
}

async fn handshake(
    ctx: &Context,
    local: u32,
    url: &Url,
    identity: &Identity,
    desired: &watch::Receiver<Desired>,
) -> Result<Socket, ConnectFailure> {
    let mut phase = Phases::start(ctx);
    let addr = resolve(url).await?;
    phase.done(Phase::Dns);
    let tcp = tcp_connect(addr, ctx.source_for(local)).await?;
    // A shaped group's link follows its live profile from the moment it connects.
    let link = ctx.settings.shaped.then(|| {
        let mut desired = desired.clone();
        let network = desired.borrow_and_update().load.network;
        (network, desired)
    });
    if let Some((network, _)) = &link {
        // TCP's handshake took one round trip of the link, which a shaper above the
        // socket cannot see.
        tokio::time::sleep(network.latency * 2).await;
    }
    phase.done(Phase::Tcp);
    // Small frames must leave at once; Nagle would add up to 40 ms to every RTT.
    tcp.set_nodelay(true)
        .map_err(|err| io_failure(&err, "setting TCP_NODELAY"))?;
    let mut stream = upgrade::secure(tcp, url, &ctx.tls).await?;
    if matches!(stream, Stream::Tls(_)) {
        phase.done(Phase::Tls);
    }
    if let Some((network, mut desired)) = link {
        let tally = shaper::Tally {
            metrics: Arc::clone(&ctx.metrics),
            group: ctx.group,
        };
        let follow: shaper::Follow = Box::new(move || {
            desired
                .has_changed()
                .unwrap_or(false)
                .then(|| desired.borrow_and_update().load.network)
        });
        let shaped = shaper::Shaped::new(stream, network, Some(follow), Some(tally));
        stream = Stream::Shaped(Box::new(shaped));
    }
    if is_sse(url) {
        let socket = event_stream(ctx, local, url, identity, stream).await?;
        phase.done(Phase::Upgrade);
        return Ok(socket);
    }
    if !is_websocket(url) {
        let framing = ctx.scenario.framing.ok_or_else(|| {
            ConnectFailure::new(
                ConnectResult::Protocol,
                format!("{url} is a plain stream, and the scenario gives no `framing`"),
            )
        })?;
        return Ok(Socket::stream(
            stream,
            framing,
            ctx.settings.max_message_size,
        ));
    }
    let headers: Vec<(String, String)> = ctx
        .scenario
        .headers
        .iter()
        .map(|(name, template)| {
            let value = template.render(&identity.values(url.as_str(), 0, clock::now_micros(), 0));
            (name.clone(), value)
        })
        .collect();
    let offer = ctx.settings.compression.as_ref();
    let upgraded = upgrade::upgrade(&mut stream, url, &headers, offer).await?;
    phase.done(Phase::Upgrade);
    let (stream, early) = match upgraded.deflate {
        Some(agreed) => {
            ctx.meter().add(Count::DeflateNegotiated, 1);
            tracing::debug!(user = %identity.user_id, %agreed, "permessage-deflate negotiated");
            let deflated = Deflated::new(
                stream,
                agreed,
                upgraded.early,
                ctx.settings.max_message_size,
                Arc::clone(&ctx.metrics),
                ctx.group,
            );
            (Stream::Deflate(Box::new(deflated)), Vec::new())
        }
        None => {
            if offer.is_some() {
                ctx.meter().add(Count::DeflateDeclined, 1);
            }
            (stream, upgraded.early)
        }
    };
    let ws = WebSocketStream::from_partially_read(stream, early, Role::Client, Some(ctx.ws_config))
        .await;
    Ok(Socket::websocket(
        ws,
        ctx.scenario.framing,
        ctx.settings.max_message_size,
    ))
}

/// Runs the login steps: send, then wait for the expected reply, ignoring other frames. The
/// error says which step failed and how, with the last frame that did not match; it counts
/// as `login` unless the connection itself broke (`protocol`: a frame the WebSocket or the
/// codec could not read; `io`: the socket failed).
async fn login(
    ctx: &Context,
    socket: &mut Socket,
    identity: &Identity,
) -> Result<(), ConnectFailure> {
    login_steps(ctx, socket, identity)
        .await
        .map_err(|(result, detail)| ConnectFailure::new(result, detail))
}

async fn login_steps(
    ctx: &Context,
    socket: &mut Socket,
    identity: &Identity,
) -> Result<(), (ConnectResult, String)> {
    let refused = |detail: String| (ConnectResult::Login, detail);
    let mine = ctx.scenario.mine_of(identity);
    for (i, step) in ctx.scenario.login.iter().enumerate() {
        // A step that names `{{room}}` joins: it runs once for each of the user's rooms.
        let joins = step.send.as_ref().is_some_and(Template::uses_room);
        let rooms = if joins { identity.room_count() } else { 1 };
        for room in 0..rooms {
            let step_no = if rooms > 1 {
                format!("{} (room {})", i + 1, identity.room(room))
            } else {
                (i + 1).to_string()
            };
            let room = identity.room(room);
            let mut unmatched: Option<String> = None;
            let exchange = async {
                if let Some(send) = &step.send {
                    let text = send.render(
                        &identity
                            .values(ctx.target.as_str(), 0, clock::now_micros(), 0)
                            .in_room(room),
                    );
                    ctx.meter().add(Count::BytesSent, text.len() as u64);
                    let frame = ctx.scenario.codec.encode(text).map_err(|err| {
                        (
                            ConnectResult::Protocol,
                            format!("login step {step_no}: cannot encode: {err}"),
                        )
                    })?;
                    socket.send(frame).await.map_err(|err| {
                        (
                            broken(&err),
                            format!("login step {step_no}: sending failed: {err}"),
                        )
                    })?;
                }
                let Some(expect) = &step.expect else {
                    return Ok(());
                };
                loop {
                    let frame = socket.next().await;
                    let data = match &frame {
                        Some(Ok(Message::Text(text))) => Some(text.as_bytes()),
                        Some(Ok(Message::Binary(data))) => Some(data.as_ref()),
                        _ => None,
                    };
                    // Read through the codec; frames it cannot read are skipped.
                    if let Some(data) = data {
                        ctx.meter().add(Count::BytesReceived, data.len() as u64);
                        let Some(text) = ctx.scenario.codec.decode(data) else {
                            continue;
                        };
                        let text = text.as_ref();
                        let frame = Frame::new(text);
                        let expected = expect.matches_for(&frame, &mine);
                        if !expected
                            && step
                                .reject
                                .as_ref()
                                .is_some_and(|r| r.matches_for(&frame, &mine))
                        {
                            return Err(refused(format!(
                                "login step {step_no}: refused by the server: {}",
                                truncate(text, 200)
                            )));
                        }
                        reply(ctx, socket, identity, &mine, text).await.map_err(
                            |(result, err)| (result, format!("login step {step_no}: {err}")),
                        )?;
                        // The frame a step waits for may need an answer too (a PING).
                        if expected {
                            return Ok(());
                        }
                        unmatched = Some(truncate(text, 200).to_string());
                        continue;
                    }
                    match frame {
                        Some(Ok(Message::Close(frame))) => {
                            return Err(refused(format!(
                                "login step {step_no}: the server closed the connection ({})",
                                describe_close(frame.as_ref())
                            )));
                        }
                        Some(Err(err)) => {
                            return Err((broken(&err), format!("login step {step_no}: {err}")));
                        }
                        None => {
                            return Err((
                                ConnectResult::Io,
                                format!(
                                    "login step {step_no}: the connection ended without a close frame"
                                ),
                            ));
                        }
                        Some(Ok(_)) => {}
                    }
                }
            };
            match timeout(step.timeout, exchange).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(refused(format!(
                        "login step {step_no}: no matching frame within {}; last frame that did not match: {}",
                        humantime::format_duration(step.timeout),
                        unmatched.as_deref().unwrap_or("(none)")
                    )));
                }
            }
        }
    }
    Ok(())
}

/// How a broken socket counts: a frame that could not be read is the server's protocol
/// error; the rest is the connection's.
fn broken(err: &tokio_tungstenite::tungstenite::Error) -> ConnectResult {
    use tokio_tungstenite::tungstenite::Error;
    match err {
        Error::Io(io) if io.kind() != std::io::ErrorKind::InvalidData => ConnectResult::Io,
        Error::ConnectionClosed | Error::AlreadyClosed => ConnectResult::Io,
        _ => ConnectResult::Protocol,
    }
}

/// Answers `text` if one of the scenario's reply rules matches it (a server may ping while a
/// user logs in). A room delivery that arrives while the login still runs (the user joined
/// one room and is joining the next) comes before the user's books open: counted untracked.
async fn reply(
    ctx: &Context,
    socket: &mut Socket,
    identity: &Identity,
    mine: &[String],
    text: &str,
) -> Result<(), (ConnectResult, String)> {
    let reading = &ctx.scenario.reading;
    let read = reading.read(text, mine);
    if matches!(read.meaning, Meaning::Delivery { .. }) {
        ctx.meter().add(Count::DeliveriesUntracked, 1);
    }
    let Some(due) = read.reply else {
        return Ok(());
    };
    let values = identity.values(ctx.target.as_str(), 0, clock::now_micros(), 0);
    let frame = ctx
        .scenario
        .codec
        .encode(reading.render_reply(&due, &values))
        .map_err(|err| {
            (
                ConnectResult::Protocol,
                format!("cannot encode a reply: {err}"),
            )
        })?;
    socket
        .send(frame)
        .await
        .map_err(|err| (broken(&err), format!("sending a reply failed: {err}")))?;
    ctx.meter().add(Count::Replies, 1);
    Ok(())
}

/// The phases of a handshake, timed one after the other into
/// `wsfleet_connect_phase_seconds{phase}`.
struct Phases<'a> {
    ctx: &'a Context,
    since: Instant,
}

impl<'a> Phases<'a> {
    fn start(ctx: &'a Context) -> Phases<'a> {
        Phases {
            ctx,
            since: Instant::now(),
        }
    }

    /// `phase` just ended: record it, and start timing the next.
    fn done(&mut self, phase: Phase) {
        let now = Instant::now();
        self.ctx
            .metrics
            .connect_phase(phase)
            .observe(now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}

/// What an event stream reads from its socket at a time.
const STREAM_READ: usize = 1024;

/// Opens a Server-Sent Events stream over `stream`: a GET of `url` (without its `sse+`)
/// asking for `text/event-stream`, resumed from the last event id seen; a publisher for what
/// the user sends, on connections of its own to `scenario.publish`'s URL.
async fn event_stream(
    ctx: &Context,
    local: u32,
    url: &Url,
    identity: &Identity,
    stream: Stream,
) -> Result<Socket, ConnectFailure> {
    // A `scenario.url` may make an event stream of a group whose target is not one: its
    // users then start afresh at each connect.
    let resume = ctx.stream_resume(local).unwrap_or_default();
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;

    let values = identity.values(url.as_str(), 0, clock::now_micros(), 0);
    let plain = |what: &str, err: &dyn std::fmt::Display| {
        ConnectFailure::new(ConnectResult::Protocol, format!("{what} {url}: {err}"))
    };
    // hyper reads into 8 KiB by default, a buffer every idle user would keep: an event
    // stream's events are small, and a longer one is read in several turns.
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(STREAM_READ))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|err| plain("HTTP with", &err))?;
    // The connection runs beside the user: it carries the event stream's body.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(http::header::HOST, host_header(url))
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    if let Some(id) = resume.last_event_id() {
        request = request.header("Last-Event-ID", id);
    }
    for (name, template) in &ctx.scenario.headers {
        request = request.header(name.as_str(), template.render(&values));
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|err| plain("a request for", &err))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| io_failure(&std::io::Error::other(err), "asking for the event stream"))?;
    let status = response.status();
    let is_events = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() || !is_events {
        let mut failure = ConnectFailure::new(
            ConnectResult::HttpStatus,
            format!(
                "HTTP {status} for {url}{}",
                if is_events {
                    ""
                } else {
                    " (not text/event-stream)"
                }
            ),
        );
        failure.status = Some(status.as_u16());
        failure.retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(upgrade::parse_retry_after);
        return Err(failure);
    }
    let publish = ctx.scenario.publish.as_ref().ok_or_else(|| {
        ConnectFailure::new(
            ConnectResult::Protocol,
            "an SSE target needs `scenario.publish`",
        )
    })?;
    let publish_url = Url::parse(&publish.url.render(&values)).map_err(|err| {
        ConnectFailure::new(
            ConnectResult::Protocol,
            format!("scenario.publish.url gives no URL: {err}"),
        )
    })?;
    let mut headers = http::HeaderMap::new();
    let host = http::HeaderValue::from_str(&host_header(&publish_url))
        .map_err(|err| plain("the publish host of", &err))?;
    headers.insert(http::header::HOST, host);
    for (name, template) in &publish.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|err| plain("a publish header for", &err))?;
        let value = http::HeaderValue::from_str(&template.render(&values))
            .map_err(|err| plain("a publish header for", &err))?;
        headers.insert(name, value);
    }
    let request = PublishRequest {
        uri: publish_url[url::Position::BeforePath..url::Position::AfterQuery]
            .parse()
            .map_err(|err| plain("the publish URL of", &err))?,
        method: publish.method.clone(),
        headers,
    };
    let (tls, source) = (ctx.tls.clone(), ctx.source_address());
    let dial: Dial = Box::new(move || {
        let (url, tls) = (publish_url.clone(), tls.clone());
        Box::pin(async move {
            let tcp = tcp_connect(resolve(&url).await.map_err(|f| f.detail)?, source)
                .await
                .map_err(|f| f.detail)?;
            tcp.set_nodelay(true).map_err(|err| err.to_string())?;
            let stream = upgrade::secure(tcp, &url, &tls)
                .await
                .map_err(|f| f.detail)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|err| err.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(sender)
        })
    });
    let sse = Sse::new(
        response.into_body(),
        resume,
        request,
        dial,
        Arc::clone(&ctx.metrics),
        ctx.group,
    );
    Ok(Socket::sse(sse))
}

/// `host` or `host:port`, as a `Host` header says it.
fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// The address of `url`'s host and port (given, or the scheme's).
pub(super) async fn resolve(url: &Url) -> Result<SocketAddr, ConnectFailure> {
    let host = url.host_str().ok_or(ConnectResult::Dns)?;
    let port = url
        .port()
        .or_else(|| match url.scheme() {
            "sse+http" => Some(80),
            "sse+https" => Some(443),
            _ => url.port_or_known_default(),
        })
        .ok_or(ConnectResult::Protocol)?;
    match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| {
                ConnectFailure::new(ConnectResult::Dns, format!("cannot resolve {host}: {err}"))
            })?
            .next()
            .ok_or_else(|| {
                ConnectFailure::new(ConnectResult::Dns, format!("{host} resolves to no address"))
            }),
    }
}

/// TCP connect, from `source` if given (bound before connecting).
pub(super) async fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, ConnectFailure> {
    let connecting = format!("connecting to {addr}");
    let Some(source) = source else {
        return TcpStream::connect(addr)
            .await
            .map_err(|err| io_failure(&err, &connecting));
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|err| io_failure(&err, "opening a socket"))?;
    // Binding to port 0 picks an ephemeral port now; when none is left, that is the error.
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AddrInUse => ConnectFailure::new(
                ConnectResult::PortsExhausted,
                format!("no free local port on {source}: {err}"),
            ),
            // Binding fails so when the address is not (or no longer) one of this host's.
            std::io::ErrorKind::AddrNotAvailable => ConnectFailure::new(
                ConnectResult::SourceAddress,
                format!("source address {source} is not an address of this host: {err}"),
            ),
            _ => io_failure(&err, &format!("binding to {source}")),
        })?;
    socket
        .connect(addr)
        .await
        .map_err(|err| io_failure(&err, &connecting))
}
