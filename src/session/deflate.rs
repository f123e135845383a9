//! permessage-deflate (RFC 7692) for WebSocket users: the offer a user makes in its upgrade
//! (`compression: deflate`), the server's answer checked and read into what was [`Agreed`],
//! and [`Deflated`], a stream layer under tungstenite — which knows no extensions — that
//! inflates the server's compressed messages into plain frames and compresses the data frames
//! tungstenite writes. A connection that did not negotiate it has no layer and no state.
//!
//! Memory: a deflate context kept across messages ("context takeover", what browsers do) is
//! the costly part — measured (README "Benchmarks", windows of 2^12) ~200 KB for zlib's
//! compressor (window, hash chains, pending buffer) and ~21 KB for an inflater, each made at
//! the first message that needs it. With `client_no_context_takeover` /
//! `server_no_context_takeover` each message stands alone, so one context per thread serves
//! every connection and a compressed user costs no more than a plain one.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression as Level, Decompress, FlushCompress, FlushDecompress};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::{Count, Metrics};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What ends every compressed message before the sender strips it (RFC 7692 7.2.1): the
/// receiver puts it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The first header byte's bits.
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// Compressed frames waiting for the socket beyond this make a writer wait.
const HIGH_WATER: usize = 64 * 1024;

/// How much is read from the socket at a time (on the stack).
const READ_CHUNK: usize = 4096;

/// `compression:` — what a user offers in its upgrade. Written `deflate` (offered as a
/// browser offers it: `permessage-deflate; client_max_window_bits`) or `{deflate: {...}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Deflate(DeflateOffer),
}

impl Serialize for Compression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Compression::Deflate(offer) => {
                crate::codec::named::write("deflate", offer, *offer == DeflateOffer::default(), s)
            }
        }
    }
}

impl Compression {
    /// The permessage-deflate offer, the only kind there is.
    pub fn deflate(&self) -> &DeflateOffer {
        match self {
            Compression::Deflate(offer) => offer,
        }
    }
}

/// The parameters of a permessage-deflate offer (RFC 7692 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeflateOffer {
    /// Ask the server to compress each message on its own: users then share one inflater
    /// per thread instead of keeping one per connection.
    #[serde(default)]
    pub server_no_context_takeover: bool,
    /// Compress each message on its own (one compressor per thread, not per connection), at
    /// some cost in ratio.
    #[serde(default)]
    pub client_no_context_takeover: bool,
    /// Ask the server for a window of at most 2^N bytes (8..=15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_max_window_bits: Option<u8>,
    /// Our window: at most 2^N bytes (9..=15; zlib cannot compress into a window of 2^8).
    /// Without it the offer still says `client_max_window_bits`, so the server may choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_max_window_bits: Option<u8>,
    /// zlib's level for what users send: 0 (stored) to 9 (smallest), 6 by default as zlib's.
    #[serde(default = "default_level")]
    pub level: u8,
}

fn default_level() -> u8 {
    6
}

impl Default for DeflateOffer {
    fn default() -> Self {
        DeflateOffer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            level: default_level(),
        }
    }
}

impl DeflateOffer {
    /// Why these settings cannot be offered, naming the setting.
    pub fn problem(&self) -> Option<String> {
        let window = |name: &str, bits: Option<u8>, least: u8| {
            bits.filter(|b| !(least..=15).contains(b))
                .map(|b| format!("{name} must be {least}..=15, got {b}"))
        };
        window("server_max_window_bits", self.server_max_window_bits, 8)
            .or_else(|| window("client_max_window_bits", self.client_max_window_bits, 9))
            .or_else(|| {
                (self.level > 9).then(|| format!("level must be 0..=9, got {}", self.level))
            })
    }

    /// The `Sec-WebSocket-Extensions` value offered.
    pub fn header(&self) -> String {
        let mut header = String::from(EXTENSION);
        if self.client_no_context_takeover {
            header.push_str("; client_no_context_takeover");
        }
        if self.server_no_context_takeover {
            header.push_str("; server_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            header.push_str(&format!("; server_max_window_bits={bits}"));
        }
        match self.client_max_window_bits {
            Some(bits) => header.push_str(&format!("; client_max_window_bits={bits}")),
            None => header.push_str("; client_max_window_bits"),
        }
        header
    }
}

/// What the server's answer agreed to: how each side compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server compresses each message on its own.
    pub server_no_context_takeover: bool,
    /// We compress each message on our own.
    pub client_no_context_takeover: bool,
    /// The server's window, 2^N bytes (15 unless it said less).
    pub server_window: u8,
    /// Our window, 2^N bytes.
    pub client_window: u8,
    /// Our zlib level.
    pub level: u8,
}

impl Agreed {
    /// Reads the server's permessage-deflate answer (one extension's parameters, the name
    /// first) against what `offer` offered. Errors say what breaks RFC 7692 7.1.
    pub fn parse(offer: &DeflateOffer, answer: &str) -> Result<Agreed, String> {
        let mut params = answer.split(';').map(str::trim);
        if params.next() != Some(EXTENSION) {
            return Err(format!("`{answer}` is not {EXTENSION}"));
        }
        let mut agreed = Agreed {
            server_no_context_takeover: false,
            client_no_context_takeover: offer.client_no_context_takeover,
            server_window: 15,
            client_window: offer.client_max_window_bits.unwrap_or(15),
            level: offer.level,
        };
        let mut seen: Vec<&str> = Vec::new();
        for param in params.filter(|p| !p.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            if seen.contains(&name) {
                return Err(format!("`{name}` twice"));
            }
            seen.push(name);
            let bits = |least: u8| -> Result<u8, String> {
                value
                    .filter(|v| !v.starts_with('0'))
                    .and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (least..=15).contains(b))
                    .ok_or_else(|| {
                        format!(
                            "`{name}={}`: a window of 2^{least}..2^15 bytes is needed",
                            value.unwrap_or("")
                        )
                    })
            };
            match (name, value) {
                ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
                ("server_max_window_bits", Some(_)) => {
                    let server = bits(8)?;
                    if offer
                        .server_max_window_bits
                        .is_some_and(|asked| server > asked)
                    {
                        return Err(format!(
                            "`{param}`: larger than the server_max_window_bits offered"
                        ));
                    }
                    agreed.server_window = server;
                }
                ("client_max_window_bits", Some(_)) => {
                    // zlib compresses into a window of at least 2^9 bytes: a server that wants
                    // 2^8 cannot be served.
                    agreed.client_window = agreed.client_window.min(bits(9)?);
                }
                _ => return Err(format!("`{param}` is no parameter of {EXTENSION} here")),
            }
        }
        Ok(agreed)
    }
}

impl fmt::Display for Agreed {
    /// The agreement in the answer's own words, for logs and the summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{EXTENSION}")?;
        if self.server_no_context_takeover {
            write!(f, "; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            write!(f, "; client_no_context_takeover")?;
        }
        write!(
            f,
            "; server_max_window_bits={}; client_max_window_bits={}",
            self.server_window, self.client_window
        )
    }
}

/// The deflate contexts of connections that keep none of their own (no context takeover):
/// one per thread, reset after each message, so such users share them.
#[derive(Default)]
struct Shared {
    inflater: Option<Decompress>,
    /// By (level, window bits).
    deflaters: Vec<((u8, u8), Compress)>,
}

thread_local! {
    static SHARED: RefCell<Shared> = RefCell::default();
}

/// A WebSocket connection that negotiated permessage-deflate, seen by tungstenite as one
/// that did not: server frames come up inflated, data frames written go down compressed.
pub struct Deflated<S> {
    inner: S,
    agreed: Agreed,
    /// The longest frame or message accepted from the server, inflated or not.
    max: usize,
    metrics: Arc<Metrics>,
    group: usize,
    /// Bytes from the server not yet cut into frames.
    received: BytesMut,
    /// Frames for tungstenite, inflated where they came compressed.
    plain: BytesMut,
    /// A compressed message arriving in fragments: its opcode and its payload so far.
    gathering: Option<(u8, BytesMut)>,
    /// Contexts kept across messages (context takeover), made at first use.
    inflater: Option<Box<Decompress>>,
    deflater: Option<Box<Compress>>,
    /// What tungstenite wrote, not yet a whole frame.
    written: BytesMut,
    /// Frames waiting for the socket.
    wire: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Deflated<S> {
    /// The layer over `inner`; `early` holds bytes the server sent after its upgrade answer.
    pub fn new(
        inner: S,
        agreed: Agreed,
        early: Vec<u8>,
        max: usize,
        metrics: Arc<Metrics>,
        group: usize,
    ) -> Deflated<S> {
        Deflated {
            inner,
            agreed,
            max,
            metrics,
            group,
            received: BytesMut::from(&early[..]),
            plain: BytesMut::new(),
            gathering: None,
            inflater: None,
            deflater: None,
            written: BytesMut::new(),
            wire: BytesMut::new(),
        }
    }

    fn count(&self, count: Count, n: usize) {
        self.metrics.group(self.group).add(count, n as u64);
    }

    /// Cuts one whole frame off `received` into `plain`, inflating a compressed message once
    /// its last fragment is in. False when no whole frame is there yet.
    fn cut_received(&mut self) -> io::Result<bool> {
        let Some(extent) = Extent::of(&self.received, self.max)? else {
            return Ok(false);
        };
        let mut frame = self.received.split_to(extent.len());
        if self.received.is_empty() {
            self.received = BytesMut::new();
        }
        let (first, opcode) = (frame[0], frame[0] & 0x0f);
        let starts = first & RSV1 != 0 && matches!(opcode, 1 | 2) && !extent.masked;
        let continues = opcode == 0 && self.gathering.is_some();
        if !(starts || continues) {
            // Control frames, uncompressed messages, and what tungstenite must refuse itself.
            self.pass(frame);
            return Ok(true);
        }
        if starts && self.gathering.is_some() {
            return Err(invalid("a message began before the compressed one ended"));
        }
        if continues && first & RSV1 != 0 {
            return Err(invalid("RSV1 set on a continuation frame (RFC 7692 6.1)"));
        }
        let payload = frame.split_off(extent.header);
        self.count(Count::DeflateWireBytesReceived, payload.len());
        match &mut self.gathering {
            None => self.gathering = Some((opcode, payload)),
            Some((_, so_far)) if so_far.len() + payload.len() > self.max => {
                return Err(too_long(self.max));
            }
            Some((_, so_far)) => so_far.extend_from_slice(&payload),
        }
        if first & FIN != 0
            && let Some((opcode, mut compressed)) = self.gathering.take()
        {
            compressed.extend_from_slice(&TAIL);
            let message = self.inflate(&compressed)?;
            self.count(Count::DeflateBytesReceived, message.len());
            let mut frame = BytesMut::with_capacity(message.len() + 10);
            put_header(&mut frame, FIN | opcode, None, message.len());
            frame.extend_from_slice(&message);
            self.pass(frame);
        }
        Ok(true)
    }

    fn pass(&mut self, frame: BytesMut) {
        if self.plain.is_empty() {
            self.plain = frame;
        } else {
            self.plain.extend_from_slice(&frame);
        }
    }

    fn inflate(&mut self, compressed: &[u8]) -> io::Result<Vec<u8>> {
        let max = self.max;
        if self.agreed.server_no_context_takeover {
            return SHARED.with_borrow_mut(|shared| {
                let inflater = shared
                    .inflater
                    .get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
                let inflated = inflate(inflater, compressed, max);
                inflater.reset(false);
                inflated
            });
        }
        let window = self.agreed.server_window.max(9);
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, window)));
        inflate(inflater, compressed, max)
    }

    fn deflate(&mut self, message: &[u8]) -> io::Result<Vec<u8>> {
        let (level, window) = (self.agreed.level, self.agreed.client_window);
        let context = || Compress::new_with_window_bits(Level::new(level.into()), false, window);
        if self.agreed.client_no_context_takeover {
            return SHARED.with_borrow_mut(|shared| {
                let at = match shared
                    .deflaters
                    .iter()
                    .position(|(k, _)| *k == (level, window))
                {
                    Some(at) => at,
                    None => {
                        shared.deflaters.push(((level, window), context()));
                        shared.deflaters.len() - 1
                    }
                };
                let deflater = &mut shared.deflaters[at].1;
                let deflated = deflate(deflater, message);
                deflater.reset();
                deflated
            });
        }
        let deflater = self.deflater.get_or_insert_with(|| Box::new(context()));
        deflate(deflater, message)
    }

    /// Turns the whole frames tungstenite wrote into frames for the wire: a whole text or
    /// binary message (one frame: tungstenite does not fragment what it sends) compressed,
    /// the rest — control frames, fragments — as written.
    fn compress_written(&mut self) -> io::Result<()> {
        while let Some(extent) = Extent::of(&self.written, crate::codec::framing::MAX_FRAME)? {
            let mut frame = self.written.split_to(extent.len());
            let (first, opcode) = (frame[0], frame[0] & 0x0f);
            let whole_message = first & FIN != 0 && first & RSV1 == 0 && matches!(opcode, 1 | 2);
            let Some(key) = extent.mask.filter(|_| whole_message) else {
                self.wire.extend_from_slice(&frame);
                continue;
            };
            let payload = &mut frame[extent.header..];
            apply_mask(payload, key);
            let mut compressed = self.deflate(payload)?;
            self.count(Count::DeflateBytesSent, payload.len());
            if compressed.ends_with(&TAIL) {
                compressed.truncate(compressed.len() - TAIL.len());
            }
            self.count(Count::DeflateWireBytesSent, compressed.len());
            apply_mask(&mut compressed, key);
            put_header(
                &mut self.wire,
                FIN | RSV1 | opcode,
                Some(key),
                compressed.len(),
            );
            self.wire.extend_from_slice(&compressed);
        }
        if self.written.is_empty() {
            self.written = BytesMut::new();
        }
        Ok(())
    }

    /// Writes the waiting frames to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wire.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wire))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wire.advance(n);
        }
        self.wire = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Deflated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    this.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.cut_received()? {
                continue;
            }
            // Read on the stack, so an idle connection keeps no read buffer of its own.
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            this.received.extend_from_slice(chunk.filled());
            if chunk.filled().is_empty() {
                // The end: what is left of a frame goes up as it is, for tungstenite to judge.
                if this.received.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.plain = this.received.split();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Deflated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wire.len() >= HIGH_WATER {
            ready!(this.poll_send(cx))?;
        }
        this.written.extend_from_slice(buf);
        this.compress_written()?;
        // What the socket does not take now goes at the next write or flush.
        if let Poll::Ready(Err(err)) = this.poll_send(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Where a frame's parts lie (RFC 6455 5.2).
#[derive(Debug, PartialEq)]
struct Extent {
    header: usize,
    payload: usize,
    masked: bool,
    mask: Option<[u8; 4]>,
}

impl Extent {
    /// The extent of the whole frame at the front of `buffer`, once it is all there; a
    /// payload longer than `max` is an error as soon as its length is read.
    fn of(buffer: &[u8], max: usize) -> io::Result<Option<Extent>> {
        let [_, second, ..] = *buffer else {
            return Ok(None);
        };
        let masked = second & 0x80 != 0;
        let (length_bytes, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            short => (0, Some(short as u64)),
        };
        let header = 2 + length_bytes + if masked { 4 } else { 0 };
        if buffer.len() < header {
            return Ok(None);
        }
        let payload = short.unwrap_or_else(|| {
            buffer[2..2 + length_bytes]
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b))
        });
        if payload > max as u64 {
            return Err(too_long(max));
        }
        let payload = payload as usize;
        if buffer.len() < header + payload {
            return Ok(None);
        }
        let mask = masked.then(|| {
            let at = 2 + length_bytes;
            [buffer[at], buffer[at + 1], buffer[at + 2], buffer[at + 3]]
        });
        Ok(Some(Extent {
            header,
            payload,
            masked,
            mask,
        }))
    }

    fn len(&self) -> usize {
        self.header + self.payload
    }
}

/// Writes a frame header: the first byte, the length, the mask key.
fn put_header(out: &mut BytesMut, first: u8, mask: Option<[u8; 4]>, len: usize) {
    out.put_u8(first);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.put_u8(masked | len as u8),
        126..=0xffff => {
            out.put_u8(masked | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(masked | 127);
            out.put_u64(len as u64);
        }
    }
    if let Some(key) = mask {
        out.put_slice(&key);
    }
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Inflates one message (its tail restored), refusing to grow past `max` bytes: a small
/// frame may inflate to gigabytes.
fn inflate(inflater: &mut Decompress, compressed: &[u8], max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity((compressed.len() * 4).clamp(64, max.max(64)));
    let mut taken = 0;
    loop {
        let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress_vec(&compressed[taken..], &mut out, FlushDecompress::Sync)
            .map_err(|err| invalid(&format!("a compressed message does not inflate: {err}")))?;
        taken += (inflater.total_in() - before_in) as usize;
        if out.len() > max {
            return Err(too_long(max));
        }
        let stuck = inflater.total_in() == before_in && inflater.total_out() == before_out;
        if (taken == compressed.len() && out.len() < out.capacity())
            || status == flate2::Status::StreamEnd
        {
            return Ok(out);
        }
        if stuck && out.len() < out.capacity() {
            return Err(invalid("a compressed message ends in the middle"));
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity().min(max + 1 - out.len()).max(1));
        }
    }
}

/// Compresses one message with a sync flush (its tail still on).
fn deflate(deflater: &mut Compress, message: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(message.len() / 2 + 64);
    let mut taken = 0;
    loop {
        let before = deflater.total_in();
        deflater
            .compress_vec(&message[taken..], &mut out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        taken += (deflater.total_in() - before) as usize;
        // A sync flush is complete when it leaves output space unused.
        if taken == message.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64));
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("permessage-deflate: {why}"),
    )
}

fn too_long(max: usize) -> io::Error {
    invalid(&format!(
        "a message over the limit of {max} bytes (max_message_size)"
    ))
}

impl<S> Deflated<S> {
    /// The stream below.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> DeflateOffer {
        DeflateOffer::default()
    }

    #[test]
    fn the_default_offer_is_a_browsers() {
        assert_eq!(
            offer().header(),
            "permessage-deflate; client_max_window_bits"
        );
        let all = DeflateOffer {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(12),
            level: 1,
        };
        assert_eq!(
            all.header(),
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"
        );
        assert_eq!(all.problem(), None);
        for (bad, says) in [
            (
                DeflateOffer {
                    client_max_window_bits: Some(8),
                    ..offer()
                },
                "client_max_window_bits must be 9..=15",
            ),
            (
                DeflateOffer {
                    server_max_window_bits: Some(16),
                    ..offer()
                },
                "server_max_window_bits must be 8..=15",
            ),
            (
                DeflateOffer {
                    level: 10,
                    ..offer()
                },
                "level must be 0..=9",
            ),
        ] {
            assert!(bad.problem().is_some_and(|p| p.contains(says)), "{bad:?}");
        }
    }

    #[test]
    fn an_answer_is_read_as_rfc_7692_says() {
        let agreed = Agreed::parse(
            &offer(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        )
        .expect("valid");
        assert_eq!((agreed.server_window, agreed.client_window), (12, 12));
        assert!(!agreed.server_no_context_takeover && !agreed.client_no_context_takeover);
        assert_eq!(
            agreed.to_string(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        );
        let bare = Agreed::parse(&offer(), "permessage-deflate").expect("valid");
        assert_eq!((bare.server_window, bare.client_window), (15, 15));
        let quoted = Agreed::parse(
            &offer(),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=\"10\"",
        )
        .expect("a quoted value is allowed");
        assert!(quoted.server_no_context_takeover);
        assert_eq!(quoted.client_window, 10);
        // Our own window stays as small as we offered.
        let small = DeflateOffer {
            client_max_window_bits: Some(10),
            ..offer()
        };
        let agreed =
            Agreed::parse(&small, "permessage-deflate; client_max_window_bits=13").expect("valid");
        assert_eq!(agreed.client_window, 10);
        let asked = DeflateOffer {
            server_max_window_bits: Some(10),
            ..offer()
        };
        for (offer, answer, says) in [
            (
                offer(),
                "permessage-deflate; server_max_window_bits=7",
                "2^8..2^15",
            ),
            (
                offer(),
                "permessage-deflate; server_max_window_bits=016",
                "2^8..2^15",
            ),
            (
                offer(),
                "permessage-deflate; client_max_window_bits=8",
                "2^9..2^15",
            ),
            (
                offer(),
                "permessage-deflate; client_max_window_bits",
                "no parameter",
            ),
            (
                offer(),
                "permessage-deflate; server_no_context_takeover=1",
                "no parameter",
            ),
            (offer(), "permessage-deflate; x_other", "no parameter"),
            (
                offer(),
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                "twice",
            ),
            (
                asked,
                "permessage-deflate; server_max_window_bits=12",
                "larger than",
            ),
            (offer(), "x-webkit-deflate-frame", "is not"),
        ] {
            let err = Agreed::parse(&offer, answer).expect_err(answer);
            assert!(err.contains(says), "{answer}: {err}");
        }
    }

    /// A loopback pair: the client end under the layer, the server end raw.
    async fn pair(
        agreed: Agreed,
        max: usize,
    ) -> (Deflated<tokio::net::TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
        let (client, server) = tokio::join!(client, listener.accept());
        let metrics = Arc::new(Metrics::new());
        let layer = Deflated::new(
            client.expect("connect"),
            agreed,
            Vec::new(),
            max,
            metrics,
            0,
        );
        (layer, server.expect("accept").0)
    }

    fn agreed(takeover: bool) -> Agreed {
        Agreed {
            server_no_context_takeover: !takeover,
            client_no_context_takeover: !takeover,
            server_window: 15,
            client_window: 15,
            level: 6,
        }
    }

    /// A server's compressed message, cut into `parts` frames.
    fn compressed_frames(deflater: &mut Compress, message: &[u8], parts: usize) -> Vec<u8> {
        let mut payload = deflate(deflater, message).expect("deflates");
        payload.truncate(payload.len() - TAIL.len());
        let chunk = payload.len().div_ceil(parts);
        let mut out = BytesMut::new();
        for (i, piece) in payload.chunks(chunk).enumerate() {
            let last = (i + 1) * chunk >= payload.len();
            let first = if i == 0 { RSV1 | 1 } else { 0 };
            put_header(
                &mut out,
                first | if last { FIN } else { 0 },
                None,
                piece.len(),
            );
            out.extend_from_slice(piece);
        }
        out.to_vec()
    }

    async fn read_frame(layer: &mut Deflated<tokio::net::TcpStream>) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        loop {
            if let Some(extent) = Extent::of(&got, usize::MAX).expect("a frame") {
                return (got[0], got[extent.header..extent.len()].to_vec());
            }
            let mut byte = [0u8; 64];
            let n = layer.read(&mut byte).await.expect("reads");
            assert!(n > 0, "ended early");
            got.extend_from_slice(&byte[..n]);
        }
    }

    #[tokio::test]
    async fn server_messages_come_up_inflated_whole_or_fragmented_with_control_frames_between() {
        use tokio::io::AsyncWriteExt;
        for takeover in [true, false] {
            let (mut layer, mut server) = pair(agreed(takeover), 1 << 20).await;
            let mut deflater = Compress::new_with_window_bits(Level::default(), false, 15);
            let text = "hello hello hello hello compressed world".repeat(20);
            for parts in [1, 3] {
                let frames = compressed_frames(&mut deflater, text.as_bytes(), parts);
                server.write_all(&frames).await.expect("write");
                if !takeover {
                    deflater.reset();
                }
                // A ping and a plain message pass as they are.
                let mut plain = BytesMut::new();
                put_header(&mut plain, FIN | 9, None, 2);
                plain.extend_from_slice(b"hi");
                put_header(&mut plain, FIN | 2, None, 3);
                plain.extend_from_slice(b"raw");
                server.write_all(&plain).await.expect("write");
                assert_eq!(
                    read_frame(&mut layer).await,
                    (FIN | 1, text.clone().into_bytes()),
                    "{parts} parts"
                );
                assert_eq!(read_frame(&mut layer).await, (FIN | 9, b"hi".to_vec()));
                assert_eq!(read_frame(&mut layer).await, (FIN | 2, b"raw".to_vec()));
            }
        }
    }

    #[tokio::test]
    async fn a_message_that_inflates_past_the_limit_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut layer, mut server) = pair(agreed(true), 10_000).await;
        let mut deflater = Compress::new_with_window_bits(Level::default(), false, 15);
        let bomb = compressed_frames(&mut deflater, &vec![b'a'; 1 << 20], 1);
        assert!(bomb.len() < 10_000, "small on the wire: {}", bomb.len());
        server.write_all(&bomb).await.expect("write");
        let err = layer.read(&mut [0u8; 64]).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit of 10000"), "{err}");
        // Garbage is refused too, not taken for a message.
        let (mut layer, mut server) = pair(agreed(true), 10_000).await;
        let mut junk = BytesMut::new();
        put_header(&mut junk, FIN | RSV1 | 1, None, 4);
        junk.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        server.write_all(&junk).await.expect("write");
        let err = layer.read(&mut [0u8; 64]).await.expect_err("refused");
        assert!(err.to_string().contains("does not inflate"), "{err}");
    }

    #[tokio::test]
    async fn written_messages_go_down_compressed_and_masked_and_control_frames_as_they_are() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for takeover in [true, false] {
            let (mut layer, mut server) = pair(agreed(takeover), 1 << 20).await;
            let key = [1, 2, 3, 4];
            let text = b"a message a message a message a message a message".repeat(10);
            let mut frames = BytesMut::new();
            for _ in 0..2 {
                let mut masked = text.clone();
                apply_mask(&mut masked, key);
                put_header(&mut frames, FIN | 1, Some(key), masked.len());
                frames.extend_from_slice(&masked);
            }
            put_header(&mut frames, FIN | 10, Some(key), 0);
            // Written a few bytes at a time, as a socket may take them.
            for piece in frames.chunks(7) {
                layer.write_all(piece).await.expect("write");
            }
            layer.flush().await.expect("flush");
            let mut inflater = Decompress::new_with_window_bits(false, 15);
            let mut got = Vec::new();
            let mut seen = 0;
            while seen < 3 {
                let mut chunk = [0u8; 1024];
                let n = server.read(&mut chunk).await.expect("read");
                got.extend_from_slice(&chunk[..n]);
                while let Some(extent) = Extent::of(&got, usize::MAX).expect("frame") {
                    let frame: Vec<u8> = got.drain(..extent.len()).collect();
                    let mut payload = frame[extent.header..].to_vec();
                    apply_mask(&mut payload, extent.mask.expect("masked"));
                    seen += 1;
                    if seen == 3 {
                        assert_eq!(frame[0], FIN | 10, "the pong as it was");
                        continue;
                    }
                    assert_eq!(frame[0], FIN | RSV1 | 1);
                    assert!(
                        payload.len() < text.len() / 4,
                        "compressed: {}",
                        payload.len()
                    );
                    payload.extend_from_slice(&TAIL);
                    assert_eq!(
                        inflate(&mut inflater, &payload, 1 << 20).expect("inflates"),
                        text
                    );
                    if !takeover {
                        inflater.reset(false);
                    }
                }
            }
        }
    }
}
