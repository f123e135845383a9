//! The weak link itself: a layer between a user's socket and its WebSocket or stream framing
//! that makes both directions' bytes feel a [`Network`] — each chunk held for the latency
//! (with jitter, never overtaking the one before, as TCP keeps order), paced to the
//! direction's bandwidth (the link is busy for `bytes / rate` per chunk), and nothing moving
//! either way during a stall. Only users whose group has a profile are wrapped; the others'
//! sockets do not know this module.
//!
//! No task of its own: the conversation's driver always polls the read side, and the read
//! side also moves what is due upstream, so one timer serves both directions. Queues are
//! bounded: past [`QUEUE_LIMIT`] bytes a direction stops taking more, so the server's send
//! buffer fills behind a slow link as it would behind a real one.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng, rngs::SmallRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

use super::settings::{Bandwidth, Network, Stall};
use crate::metrics::{Count, Latency, Metrics};

/// Most bytes a direction holds in flight (a link's buffer).
pub const QUEUE_LIMIT: usize = 256 * 1024;

/// Largest chunk read from the socket at once.
const READ_CHUNK: usize = 8 * 1024;

/// The error a handover ends the connection with: it vanished, as a phone's old network does.
#[derive(Debug)]
pub struct HandedOver;

impl std::fmt::Display for HandedOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handover: the connection vanished as the network changed")
    }
}

impl std::error::Error for HandedOver {}

/// Whether `err` is a shaper's handover.
pub fn is_handover(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<HandedOver>())
}

/// Where a shaped connection's measurements go: its group's meter.
pub struct Tally {
    pub metrics: Arc<Metrics>,
    pub group: usize,
}

/// Bytes on their way through the link.
struct Chunk {
    bytes: Bytes,
    /// How much of it has gone on.
    sent: usize,
    arrived: Instant,
    due: Instant,
    /// How long it waited for the bandwidth (its own transmission included).
    throttled: Duration,
}

/// One direction of the link.
struct Lane {
    queue: VecDeque<Chunk>,
    queued: usize,
    rate: Option<Bandwidth>,
    /// When the link is free for the next chunk.
    free_at: Instant,
    /// The latest due time given: no chunk overtakes another.
    last_due: Instant,
}

impl Lane {
    fn new(rate: Option<Bandwidth>, now: Instant) -> Lane {
        Lane {
            queue: VecDeque::new(),
            queued: 0,
            rate,
            free_at: now,
            last_due: now,
        }
    }

    fn push(&mut self, bytes: Bytes, now: Instant, delay: Duration) {
        let done = match self.rate {
            Some(rate) => self.free_at.max(now) + rate.time_for(bytes.len()),
            None => now,
        };
        self.free_at = done;
        let due = (done + delay).max(self.last_due);
        self.last_due = due;
        self.queued += bytes.len();
        self.queue.push_back(Chunk {
            bytes,
            sent: 0,
            arrived: now,
            due,
            throttled: done - now,
        });
    }

    /// The chunk due by `now`, if any.
    fn due(&mut self, now: Instant) -> Option<&mut Chunk> {
        self.queue.front_mut().filter(|c| reached(now, c.due))
    }

    /// Takes `n` more bytes of the front chunk as gone; the whole chunk, when it is.
    fn advance(&mut self, n: usize) -> Option<Chunk> {
        let front = self.queue.front_mut()?;
        front.sent += n;
        self.queued -= n;
        if front.sent < front.bytes.len() {
            return None;
        }
        self.queue.pop_front()
    }
}

/// A socket behind a weak link.
pub struct Shaped<S> {
    inner: S,
    link: Network,
    down: Lane,
    up: Lane,
    /// How the server's side ended (end of stream or error), and when that reaches us.
    down_end: Option<(Instant, io::Result<()>)>,
    /// The stall ahead or under way: its start and end.
    stall: Option<(Instant, Instant)>,
    stall_counted: bool,
    /// The socket took no more of what is due upstream.
    up_blocked: bool,
    /// Writing upstream failed, seen while reading: told to the next write.
    up_failed: Option<io::Error>,
    /// When the connection vanishes in a handover.
    handover_at: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    rng: SmallRng,
    follow: Option<Follow>,
    tally: Option<Tally>,
}

/// Where a shaped connection hears of a new profile: called on every poll, it gives the new
/// one when the profile changed since it last did. Nothing wakes the link for it: whoever
/// changes the profile has the connection polled again (the conversation's loop does, on
/// every change of the desired load).
pub type Follow = Box<dyn FnMut() -> Option<Network> + Send + Sync>;

/// The stall after `from`: its start and end.
fn next_stall(spec: Stall, from: Instant, rng: &mut SmallRng) -> (Instant, Instant) {
    let start = from + spec.every.sample(rng);
    (start, start + spec.lasts.sample(rng))
}

impl<S> Shaped<S> {
    /// `inner` behind `link`; with `follow`, the link becomes what `follow` gives whenever it
    /// gives something (the group's live profile).
    pub fn new(inner: S, link: Network, follow: Option<Follow>, tally: Option<Tally>) -> Shaped<S> {
        let now = Instant::now();
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        Shaped {
            inner,
            link,
            down: Lane::new(link.down, now),
            up: Lane::new(link.up, now),
            down_end: None,
            stall: link.stall.map(|spec| next_stall(spec, now, &mut rng)),
            stall_counted: false,
            up_blocked: false,
            up_failed: None,
            handover_at: link.handover.map(|h| now + h.every.sample(&mut rng)),
            timer: Box::pin(sleep_until(now)),
            rng,
            follow,
            tally,
        }
    }

    /// Takes up a new profile, if `follow` has one: from `now` bytes entering the link feel
    /// it (those in it keep their times); a changed stall or handover schedule starts anew.
    fn follow(&mut self, now: Instant) {
        let Some(link) = self.follow.as_mut().and_then(|follow| follow()) else {
            return;
        };
        self.down.rate = link.down;
        self.up.rate = link.up;
        if link.stall != self.link.stall {
            self.stall = link.stall.map(|spec| next_stall(spec, now, &mut self.rng));
            self.stall_counted = false;
        }
        if link.handover != self.link.handover {
            self.handover_at = link.handover.map(|h| now + h.every.sample(&mut self.rng));
        }
        self.link = link;
    }

    /// The socket below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// One chunk's trip through the link: the latency, jitter drawn around it.
    fn delay(&mut self) -> Duration {
        let (latency, jitter) = (self.link.latency, self.link.jitter);
        if jitter.is_zero() {
            return latency;
        }
        let offset = self.rng.random_range(-1.0..=1.0) * jitter.as_secs_f64();
        Duration::from_secs_f64((latency.as_secs_f64() + offset).max(0.0))
    }

    /// The end of the stall under way at `now`, if one is (scheduling the next once it ends).
    fn stalled(&mut self, now: Instant) -> Option<Instant> {
        let spec = self.link.stall?;
        let (start, end) = self.stall?;
        if reached(now, end) {
            self.stall = Some(next_stall(spec, end, &mut self.rng));
            self.stall_counted = false;
            return self.stalled(now);
        }
        if !reached(now, start) {
            return None;
        }
        if !self.stall_counted {
            self.stall_counted = true;
            self.count(Count::NetworkStalls);
        }
        Some(end)
    }

    fn count(&self, count: Count) {
        if let Some(tally) = &self.tally {
            tally.metrics.group(tally.group).add(count, 1);
        }
    }

    /// A chunk through: its time in the link, and the part of it the bandwidth took.
    fn passed(&self, chunk: &Chunk, now: Instant) {
        if let Some(tally) = &self.tally {
            let meter = tally.metrics.group(tally.group);
            meter.observe(Latency::NetworkDelay, now - chunk.arrived);
            if !chunk.throttled.is_zero() {
                meter.observe(Latency::NetworkThrottle, chunk.throttled);
            }
        }
    }

    /// Sleeps until `at` (the earliest thing due, [`reached`] half a tick early); whether
    /// that time has come already.
    fn wait_until(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let wake = at.checked_sub(HALF_TICK).unwrap_or(at);
        if self.timer.deadline() != wake {
            self.timer.as_mut().reset(wake);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn handed_over(&self, now: Instant) -> bool {
        self.handover_at.is_some_and(|at| reached(now, at))
    }
}

/// Half of tokio's timer tick (1 ms). A timer fires at the first tick at or after its
/// deadline, so a link that waited for exact times would add ~1 ms each way to what its
/// profile says; waking half a tick early and taking a time within half a tick as come keeps
/// the error of each wait within ±0.5 ms, around zero.
const HALF_TICK: Duration = Duration::from_micros(500);

/// Whether `at` has come by `now`, give or take [`HALF_TICK`].
fn reached(now: Instant, at: Instant) -> bool {
    at <= now + HALF_TICK
}

fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shaped<S> {
    /// Writes what is due upstream, as far as the socket takes it (a socket that takes no
    /// more wakes us itself: the timer then leaves upstream out).
    fn pump_up(&mut self, cx: &mut Context<'_>, now: Instant) -> io::Result<()> {
        if let Some(err) = self.up_failed.take() {
            return Err(err);
        }
        let mut wrote = false;
        self.up_blocked = false;
        while let Some(chunk) = self.up.due(now) {
            match Pin::new(&mut self.inner).poll_write(cx, &chunk.bytes[chunk.sent..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    wrote = true;
                    if let Some(done) = self.up.advance(n) {
                        self.passed(&done, now);
                    }
                }
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => {
                    self.up_blocked = true;
                    break;
                }
            }
        }
        if wrote {
            // A TLS layer below holds records until flushed.
            if let Poll::Ready(Err(err)) = Pin::new(&mut self.inner).poll_flush(cx) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Reads what the server sent into the link, while the link has room.
    fn fill_down(&mut self, cx: &mut Context<'_>, now: Instant) {
        while self.down.queued < QUEUE_LIMIT && self.down_end.is_none() {
            let mut scratch = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut scratch);
            let ended = match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Pending => return,
                Poll::Ready(Ok(())) if read.filled().is_empty() => Ok(()),
                Poll::Ready(Ok(())) => {
                    let bytes = Bytes::copy_from_slice(read.filled());
                    let delay = self.delay();
                    self.down.push(bytes, now, delay);
                    continue;
                }
                Poll::Ready(Err(err)) => Err(err),
            };
            // The end travels the link too, behind what came before it.
            let at = (now + self.link.latency).max(self.down.last_due);
            self.down_end = Some((at, ended));
        }
    }

    /// The next thing due either way, for the timer.
    fn next_due(&self, stall_end: Option<Instant>) -> Option<Instant> {
        if stall_end.is_some() {
            return earliest([stall_end, self.handover_at]);
        }
        earliest([
            self.down.queue.front().map(|c| c.due),
            self.up
                .queue
                .front()
                .map(|c| c.due)
                .filter(|_| !self.up_blocked && self.up_failed.is_none()),
            self.down_end.as_ref().map(|(at, _)| *at),
            self.handover_at,
            self.stall
                .map(|(start, _)| start)
                .filter(|_| !self.down.queue.is_empty() || !self.up.queue.is_empty()),
        ])
    }
}

fn handover_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, HandedOver)
}

/// What one side of the link does with `now` and the stall under way (if any): finished
/// (`Some`), or waiting for the next thing due (`None`).
type Step<'a, S, T> = dyn FnMut(&mut Shaped<S>, &mut Context<'_>, Instant, Option<Instant>) -> Option<Poll<io::Result<T>>>
    + 'a;

impl<S: AsyncRead + AsyncWrite + Unpin> Shaped<S> {
    /// The loop every side runs: take up a new profile, end on a handover, else `step`; what
    /// `step` cannot finish waits for the next thing due either way.
    fn run<T>(&mut self, cx: &mut Context<'_>, step: &mut Step<'_, S, T>) -> Poll<io::Result<T>> {
        loop {
            let now = Instant::now();
            self.follow(now);
            if self.handed_over(now) {
                return Poll::Ready(Err(handover_error()));
            }
            let stall_end = self.stalled(now);
            if let Some(done) = step(self, cx, now, stall_end) {
                return done;
            }
            match self.next_due(stall_end) {
                Some(at) if self.wait_until(at, cx) => continue,
                _ => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().run(cx, &mut |this, cx, now, stall_end| {
            if stall_end.is_some() {
                return None;
            }
            // A write that failed is the writer's to hear (what the server sent before it
            // went, its close frame say, is still to be read).
            if let Err(err) = this.pump_up(cx, now) {
                this.up_failed = Some(err);
            }
            this.fill_down(cx, now);
            if let Some(chunk) = this.down.due(now) {
                let n = buf.remaining().min(chunk.bytes.len() - chunk.sent);
                buf.put_slice(&chunk.bytes[chunk.sent..chunk.sent + n]);
                if let Some(done) = this.down.advance(n) {
                    this.passed(&done, now);
                }
                return Some(Poll::Ready(Ok(())));
            }
            let ended = this
                .down_end
                .as_ref()
                .is_some_and(|(at, _)| reached(now, *at));
            if !(this.down.queue.is_empty() && ended) {
                return None;
            }
            let (at, end) = this.down_end.take().expect("checked above");
            // Reading on after the end keeps giving the end.
            this.down_end = Some((at, Ok(())));
            Some(Poll::Ready(end))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().run(cx, &mut |this, cx, now, stall_end| {
            let mut flow = |this: &mut Shaped<S>| match stall_end {
                None => this.pump_up(cx, now),
                Some(_) => Ok(()),
            };
            if this.up.queued >= QUEUE_LIMIT
                && let Err(err) = flow(this)
            {
                return Some(Poll::Ready(Err(err)));
            }
            if this.up.queued >= QUEUE_LIMIT {
                return None;
            }
            let delay = this.delay();
            this.up.push(Bytes::copy_from_slice(buf), now, delay);
            Some(Poll::Ready(flow(this).map(|()| buf.len())))
        })
    }

    /// Bytes handed to the link are on their way, as bytes in a kernel's send buffer are.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let now = Instant::now();
        this.follow(now);
        if this.stalled(now).is_none() {
            this.pump_up(cx, now)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Shuts down once everything written went through the link.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().run(cx, &mut |this, cx, now, stall_end| {
            stall_end?;
            if let Err(err) = this.pump_up(cx, now) {
                return Some(Poll::Ready(Err(err)));
            }
            this.up
                .queue
                .is_empty()
                .then(|| Pin::new(&mut this.inner).poll_shutdown(cx))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn link(text: &str) -> Network {
        serde_norway::from_str(text).expect("a valid profile")
    }

    /// A shaped client end and the plain server end of an in-memory connection.
    fn pair(profile: &str) -> (Shaped<DuplexStream>, DuplexStream) {
        let (client, server) = duplex(1 << 20);
        (Shaped::new(client, link(profile), None, None), server)
    }

    /// Reads exactly `n` bytes, and when the last of them came.
    async fn read_n(reader: &mut (impl AsyncRead + Unpin), n: usize) -> (Vec<u8>, Instant) {
        let mut got = vec![0u8; n];
        reader.read_exact(&mut got).await.expect("read");
        (got, Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn each_direction_is_late_by_the_latency() {
        let (mut client, mut server) = pair("{latency: 50ms}");
        let start = Instant::now();
        client.write_all(b"ping").await.expect("write");
        // The write is taken at once; the bytes reach the server 50 ms later, moved by the
        // reading side.
        assert_eq!(start.elapsed(), Duration::ZERO);
        let reader = tokio::spawn(async move {
            let (got, at) = read_n(&mut server, 4).await;
            server.write_all(b"pong").await.expect("write");
            (got, at, server)
        });
        let (pong, back) = read_n(&mut client, 4).await;
        let (ping, arrived, _server) = reader.await.expect("server");
        assert_eq!(
            (ping.as_slice(), pong.as_slice()),
            (&b"ping"[..], &b"pong"[..])
        );
        assert_eq!(arrived - start, Duration::from_millis(50), "up");
        assert_eq!(
            back - start,
            Duration::from_millis(100),
            "a round trip is twice it"
        );
    }

    /// The server writes 4-byte chunks `every` apart; each chunk's delay, in order.
    async fn delays(profile: &str, chunks: u32, every: Duration) -> Vec<Duration> {
        let (mut client, mut server) = pair(profile);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for i in 0..chunks {
                tokio::time::sleep_until(start + every * i).await;
                server.write_all(&i.to_be_bytes()).await.expect("write");
            }
            server
        });
        let mut delays = Vec::new();
        for i in 0..chunks {
            let (got, at) = read_n(&mut client, 4).await;
            assert_eq!(
                u32::from_be_bytes(got.try_into().expect("4")),
                i,
                "in order"
            );
            delays.push(at - (start + every * i));
        }
        drop(writer.await.expect("writer"));
        delays
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_profile_shapes_the_bytes_that_enter_after_it() {
        let (profile, mut heard) = tokio::sync::watch::channel(link("{latency: 50ms}"));
        heard.mark_unchanged();
        let follow: Follow = Box::new(move || {
            heard
                .has_changed()
                .unwrap_or(false)
                .then(|| *heard.borrow_and_update())
        });
        let (client, mut server) = duplex(1 << 20);
        let mut client = Shaped::new(client, link("{latency: 50ms}"), Some(follow), None);
        let start = Instant::now();
        server.write_all(b"old!").await.expect("write");
        let (_, first) = read_n(&mut client, 4).await;
        assert_eq!(first - start, Duration::from_millis(50));
        profile.send_replace(link("{latency: 10ms}"));
        server.write_all(b"new!").await.expect("write");
        let (_, second) = read_n(&mut client, 4).await;
        assert_eq!(second - first, Duration::from_millis(10), "the new latency");

        // An hour's stall, taken away while it holds bytes back: they move on at once.
        profile.send_replace(link("{latency: 10ms, stall: {every: 1ms, for: 1h}}"));
        server.write_all(b"held").await.expect("write");
        let stalled = tokio::time::timeout(Duration::from_secs(1), read_n(&mut client, 4)).await;
        assert!(stalled.is_err(), "held by the stall");
        let lifted = Instant::now();
        profile.send_replace(link("{latency: 10ms}"));
        let (got, at) = read_n(&mut client, 4).await;
        assert_eq!(got, b"held");
        // They entered the link before the stall began: their latency has long passed.
        assert_eq!(at, lifted, "what the stall held moves on at once");
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_the_delay_around_the_latency() {
        // Chunks far enough apart that keeping the order never holds one back.
        let delays = delays(
            "{latency: 100ms, jitter: 40ms}",
            300,
            Duration::from_millis(100),
        )
        .await;
        let (least, most) = (
            delays.iter().min().expect("some"),
            delays.iter().max().expect("some"),
        );
        assert!(*least >= Duration::from_millis(60), "{least:?}");
        assert!(*most <= Duration::from_millis(140), "{most:?}");
        assert!(
            *most - *least >= Duration::from_millis(60),
            "spread: {least:?}..{most:?}"
        );
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!(
            (Duration::from_millis(95)..=Duration::from_millis(105)).contains(&mean),
            "uniform around the latency: mean {mean:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_chunks_never_overtake_one_another() {
        // 5 ms apart with ±40 ms of jitter: many would overtake; none may (asserted in
        // `delays` by content), so a chunk is at most held for the one before it.
        let delays = delays(
            "{latency: 100ms, jitter: 40ms}",
            300,
            Duration::from_millis(5),
        )
        .await;
        let every = Duration::from_millis(5);
        for (i, pair) in delays.windows(2).enumerate() {
            assert!(
                pair[1] + every >= pair[0],
                "chunk {} came before chunk {i}",
                i + 1
            );
        }
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_holds_each_direction_to_its_rate() {
        let (mut client, mut server) = pair("{down: 1mbit, up: 256kbit}");
        let start = Instant::now();
        let message = vec![7u8; 100_000];
        server.write_all(&message).await.expect("write");
        let (got, at) = read_n(&mut client, message.len()).await;
        assert_eq!(got, message);
        let took = (at - start).as_secs_f64();
        // 100 KB at 1 Mbit/s: 0.8 s, within 5%.
        assert!((0.76..=0.84).contains(&took), "down took {took:.3} s");
        let start = Instant::now();
        let up = vec![1u8; 32_000];
        client.write_all(&up).await.expect("write");
        let reader = tokio::spawn(async move { read_n(&mut server, 32_000).await.1 });
        // The client must be read for the link to move upstream: the driver always is.
        let mut sink = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read(&mut sink)).await;
        let at = reader.await.expect("server");
        let took = (at - start).as_secs_f64();
        assert!(
            (0.95..=1.05).contains(&took),
            "32 KB at 256 kbit/s: {took:.3} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_holds_everything_until_it_ends() {
        let (mut client, mut server) = pair("{stall: {every: 1s, for: 3s}}");
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.write_all(b"late").await.expect("write");
        let (_, at) = read_n(&mut client, 4).await;
        assert_eq!(
            at - start,
            Duration::from_secs(4),
            "held until the stall's end"
        );
        // Before the next one, bytes pass at once.
        server.write_all(b"next").await.expect("write");
        let (_, next) = read_n(&mut client, 4).await;
        assert_eq!(next, at);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_stream_comes_behind_the_bytes() {
        let (mut client, mut server) = pair("{latency: 20ms}");
        server.write_all(b"bye").await.expect("write");
        drop(server);
        let start = Instant::now();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("to the end");
        assert_eq!(all, b"bye");
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handover_ends_the_connection_as_a_vanishing() {
        let (mut client, _server) = pair("{handover: {every: 2s}}");
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).await.expect_err("vanished");
        assert!(is_handover(&err), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(!is_handover(&io::Error::other("other")));
    }
}
