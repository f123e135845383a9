//! One simulated user: connect (timed), heartbeat, send on schedule, receive, and reconnect
//! with backoff, for as long as its cancellation token lives.
//!
//! Memory per held connection is what limits a fleet, so a user is one task whose state is a
//! few words while idle: the connect and conversation futures are boxed (their large state
//! lives on the heap only while in use), all timers share one `sleep_until` on the earliest
//! deadline, and socket buffers are sized in [`ws_config`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, WebSocketConfig, frame::coding::CloseCode,
};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::backoff;
use crate::clock;
use crate::config::{Config, Heartbeat, Reconnect};
use crate::load::Load;
use crate::metrics::{ConnectResult, DisconnectReason, Metrics};
use crate::pacer::Pacer;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a user waits for the server's answer to its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What every user of a fleet shares, read-only.
pub struct Context {
    pub target: Url,
    pub connect_timeout: Duration,
    /// Bound on one frame write; a server that stops reading must not freeze a user.
    pub write_timeout: Duration,
    pub heartbeat: Heartbeat,
    pub reconnect: Reconnect,
    pub ws_config: WebSocketConfig,
    /// Built once: a TLS config per connect would reload the root store every time.
    pub connector: Option<Connector>,
    pub metrics: Arc<Metrics>,
    pub pacer: Pacer,
}

impl Context {
    pub fn new(config: &Config, target: Url, metrics: Arc<Metrics>) -> Context {
        let connector = (target.scheme() == "wss").then(tls_connector);
        Context {
            target,
            connect_timeout: config.connect_timeout,
            write_timeout: config.heartbeat.timeout.max(Duration::from_secs(1)),
            heartbeat: config.heartbeat.clone(),
            reconnect: config.reconnect.clone(),
            ws_config: ws_config(),
            connector,
            metrics,
            pacer: Pacer::new(config.connect_rate),
        }
    }
}

/// Socket buffers sized for many mostly-idle connections: tungstenite's defaults reserve
/// 128 KiB of read buffer per socket, which alone would cost 2.4 GB at 19k users.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

fn tls_connector() -> Connector {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

/// One simulated user.
pub struct User {
    pub id: u32,
    pub ctx: Arc<Context>,
    pub load: watch::Receiver<Load>,
    pub cancel: CancellationToken,
}

impl User {
    /// Keeps this user connected until its token is cancelled.
    pub async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.ctx.pacer.wait() => {}
            }
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                attempt = Box::pin(connect(&self.ctx)) => attempt,
            };
            match attempt {
                Ok(socket) => {
                    failures = 0;
                    let metrics = Arc::clone(&self.ctx.metrics);
                    metrics.users_active.inc();
                    let reason = Box::pin(self.converse(socket)).await;
                    metrics.users_active.dec();
                    metrics.disconnect(reason).inc();
                    if reason == DisconnectReason::ClientClose {
                        return;
                    }
                    tracing::debug!(user = self.id, reason = reason.as_str(), "disconnected");
                }
                Err(result) => {
                    self.ctx.metrics.connect_result(result).inc();
                    tracing::debug!(user = self.id, result = result.as_str(), "connect failed");
                }
            }
            failures = failures.saturating_add(1);
            let wait = backoff::delay(&self.ctx.reconnect, failures);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Talks over one connection until it ends, and says why it ended.
    async fn converse(&mut self, mut socket: Socket) -> DisconnectReason {
        let ctx = Arc::clone(&self.ctx);
        let metrics = &ctx.metrics;
        let mut timers = Timers::start(&ctx.heartbeat, self.load.borrow().message_interval);
        let mut seq: u64 = 0;
        loop {
            let wake = timers.earliest();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    close(&mut socket).await;
                    return DisconnectReason::ClientClose;
                }
                changed = self.load.changed() => {
                    if changed.is_ok() {
                        let interval = self.load.borrow_and_update().message_interval;
                        timers.set_message_interval(interval);
                    }
                }
                frame = socket.next() => {
                    let frame = match frame {
                        None => return DisconnectReason::Reset,
                        Some(Err(err)) => return read_failure(&err),
                        Some(Ok(frame)) => frame,
                    };
                    match frame {
                        Message::Text(text) => {
                            metrics.messages_received.inc();
                            metrics.bytes_received.inc_by(text.len() as u64);
                            match parse_echo(&text, self.id) {
                                Some(sent_at) => metrics.record_rtt(clock::since_micros(sent_at)),
                                None => metrics.frames_invalid.inc(),
                            }
                        }
                        Message::Binary(data) => {
                            metrics.messages_received.inc();
                            metrics.bytes_received.inc_by(data.len() as u64);
                            metrics.frames_invalid.inc();
                        }
                        Message::Pong(data) => {
                            // Unsolicited pongs are allowed (RFC 6455 5.5.3) and carry no stamp.
                            if let Ok(stamp) = <[u8; 8]>::try_from(&data[..]) {
                                let rtt = clock::since_micros(u64::from_be_bytes(stamp));
                                metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                                timers.pong_deadline = None;
                            }
                        }
                        Message::Close(_) => return DisconnectReason::ServerClose,
                        Message::Ping(_) | Message::Frame(_) => {}
                    }
                }
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    let now = Instant::now();
                    if timers.pong_deadline.is_some_and(|d| now >= d) {
                        return DisconnectReason::HeartbeatTimeout;
                    }
                    if let Some(ping) = timers.ping_due(now, &ctx.heartbeat) {
                        let stamp = clock::micros_at(ping.into_std()).to_be_bytes();
                        let frame = Message::Ping(stamp.to_vec().into());
                        if let Err(reason) = self.write(&mut socket, frame).await {
                            return reason;
                        }
                    }
                    if let Some(scheduled) = timers.send_due(now) {
                        seq += 1;
                        let text = echo_message(self.id, seq, scheduled, self.load.borrow().payload_size);
                        let size = text.len() as u64;
                        if let Err(reason) = self.write(&mut socket, Message::text(text)).await {
                            return reason;
                        }
                        metrics.messages_sent.inc();
                        metrics.bytes_sent.inc_by(size);
                        metrics.send_lag.observe((Instant::now() - scheduled).as_secs_f64());
                    }
                }
            }
        }
    }

    async fn write(&self, socket: &mut Socket, frame: Message) -> Result<(), DisconnectReason> {
        match timeout(self.ctx.write_timeout, socket.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(read_failure(&err)),
            Err(_) => Err(DisconnectReason::SendTimeout),
        }
    }
}

/// The deadlines of one connection; the user sleeps until the earliest of them.
struct Timers {
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_send: Option<Instant>,
    message_interval: Duration,
}

impl Timers {
    /// First ping and first send at a random phase, so a fleet that connected together does
    /// not tick together.
    fn start(heartbeat: &Heartbeat, message_interval: Duration) -> Timers {
        let now = Instant::now();
        let phase = |period: Duration| {
            (!period.is_zero()).then(|| now + period.mul_f64(rand::rng().random::<f64>()))
        };
        Timers {
            next_ping: phase(heartbeat.interval),
            pong_deadline: None,
            next_send: phase(message_interval),
            message_interval,
        }
    }

    fn earliest(&self) -> Option<Instant> {
        [self.next_ping, self.pong_deadline, self.next_send]
            .into_iter()
            .flatten()
            .min()
    }

    /// If a ping is due, schedules the next one, arms the pong deadline and returns the time.
    fn ping_due(&mut self, now: Instant, heartbeat: &Heartbeat) -> Option<Instant> {
        let due = self.next_ping.filter(|&t| now >= t)?;
        self.next_ping = Some(due + heartbeat.interval);
        // One outstanding ping at a time: its deadline is what a missed pong is judged by.
        self.pong_deadline.get_or_insert(now + heartbeat.timeout);
        Some(now)
    }

    /// If a message is due, returns its *scheduled* time and schedules the next one. The
    /// schedule never slips: a late user sends its backlog back to back, each message stamped
    /// with the time it should have left (no coordinated omission).
    fn send_due(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next_send.filter(|&t| now >= t)?;
        self.next_send = Some(due + self.message_interval);
        Some(due)
    }

    fn set_message_interval(&mut self, interval: Duration) {
        if interval == self.message_interval {
            return;
        }
        self.message_interval = interval;
        let now = Instant::now();
        self.next_send = (!interval.is_zero()).then(|| match self.next_send {
            Some(next) => next.min(now + interval),
            None => now + interval.mul_f64(rand::rng().random::<f64>()),
        });
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Opens one connection: TCP connect, TLS if wss, HTTP upgrade — all within the timeout.
/// Records the handshake time on success; returns the failure reason otherwise.
async fn connect(ctx: &Context) -> Result<Socket, ConnectResult> {
    let started = Instant::now();
    let handshake = async {
        let host = ctx.target.host_str().ok_or(ConnectResult::Dns)?;
        let port = ctx
            .target
            .port_or_known_default()
            .ok_or(ConnectResult::Protocol)?;
        let tcp = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, port)).await,
            Err(_) => {
                let mut addrs = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|_| ConnectResult::Dns)?;
                let addr = addrs.next().ok_or(ConnectResult::Dns)?;
                TcpStream::connect(addr).await
            }
        }
        .map_err(|err| io_failure(&err))?;
        // Small frames must leave at once; Nagle would add up to 40 ms to every RTT.
        tcp.set_nodelay(true).map_err(|err| io_failure(&err))?;
        let (socket, _response) = tokio_tungstenite::client_async_tls_with_config(
            ctx.target.as_str(),
            tcp,
            Some(ctx.ws_config),
            ctx.connector.clone(),
        )
        .await
        .map_err(|err| handshake_failure(&err))?;
        Ok(socket)
    };
    let socket = timeout(ctx.connect_timeout, handshake)
        .await
        .map_err(|_| ConnectResult::Timeout)??;
    ctx.metrics.record_connect(started.elapsed());
    Ok(socket)
}

/// Sends a close frame and waits (bounded) for the server to answer it.
async fn close(socket: &mut Socket) {
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

fn io_failure(err: &std::io::Error) -> ConnectResult {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => ConnectResult::Refused,
        ErrorKind::TimedOut => ConnectResult::Timeout,
        _ if is_tls_error(err) => ConnectResult::Tls,
        _ => ConnectResult::Io,
    }
}

fn is_tls_error(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

fn handshake_failure(err: &tungstenite::Error) -> ConnectResult {
    match err {
        tungstenite::Error::Io(io) => io_failure(io),
        tungstenite::Error::Tls(_) => ConnectResult::Tls,
        tungstenite::Error::Http(_) => ConnectResult::HttpStatus,
        _ => ConnectResult::Protocol,
    }
}

fn read_failure(err: &tungstenite::Error) -> DisconnectReason {
    match err {
        tungstenite::Error::Io(_)
        | tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed => DisconnectReason::Reset,
        _ => DisconnectReason::Protocol,
    }
}

/// The echo protocol's message: who sent it, its sequence number and its scheduled send time.
pub fn echo_message(user: u32, seq: u64, scheduled: Instant, payload_size: usize) -> String {
    use std::fmt::Write;
    let ts = clock::micros_at(scheduled.into_std());
    let mut text = String::with_capacity(64 + payload_size);
    let _ = write!(text, r#"{{"user":{user},"seq":{seq},"ts":{ts},"payload":""#);
    text.extend(std::iter::repeat_n('x', payload_size));
    text.push_str("\"}");
    text
}

/// The scheduled send time of an echoed message of this user, if `text` is one.
pub fn parse_echo(text: &str, user: u32) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Echo {
        user: u32,
        ts: u64,
    }
    let echo: Echo = serde_json::from_str(text).ok()?;
    (echo.user == user).then_some(echo.ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_messages_round_trip() {
        let at = Instant::now();
        let text = echo_message(7, 3, at, 16);
        assert_eq!(parse_echo(&text, 7), Some(clock::micros_at(at.into_std())));
        assert_eq!(
            parse_echo(&text, 8),
            None,
            "another user's message is not ours"
        );
        assert_eq!(parse_echo("not json", 7), None);
        assert!(text.contains(&"x".repeat(16)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_user_keeps_the_schedule() {
        let heartbeat = Heartbeat {
            interval: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        let mut timers = Timers::start(&heartbeat, Duration::from_millis(100));
        let first = timers.next_send.expect("messages are on");
        // Wake up 350 ms late: four messages are due, each stamped with its own slot.
        let now = first + Duration::from_millis(350);
        let sent: Vec<_> = std::iter::from_fn(|| timers.send_due(now)).collect();
        let expected: Vec<_> = (0..4)
            .map(|i| first + Duration::from_millis(100 * i))
            .collect();
        assert_eq!(sent, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_pong_keeps_the_first_deadline() {
        let heartbeat = Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
        };
        let mut timers = Timers::start(&heartbeat, Duration::ZERO);
        let first = timers.next_ping.expect("heartbeat is on");
        assert!(timers.ping_due(first, &heartbeat).is_some());
        assert_eq!(
            timers.pong_deadline,
            Some(first + Duration::from_millis(500))
        );
        let second = first + Duration::from_secs(1);
        assert!(timers.ping_due(second, &heartbeat).is_some());
        assert_eq!(
            timers.pong_deadline,
            Some(first + Duration::from_millis(500))
        );
        assert_eq!(timers.next_send, None);
    }
}
