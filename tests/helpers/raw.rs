//! Raw WebSocket on the server side, for servers that misbehave on purpose: the upgrade
//! answered by hand, frames written byte by byte.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads the client's upgrade request and answers 101 with `extra` header lines (each ending
/// in `\r\n`); returns the request, or `None` if the client left or sent no key.
pub async fn accept_upgrade_with(tcp: &mut TcpStream, extra: &str) -> Option<String> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.ok()?;
        request.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&request).into_owned();
    let key = request.lines().find_map(|l| {
        l.strip_prefix("Sec-WebSocket-Key: ")
            .or_else(|| l.strip_prefix("sec-websocket-key: "))
    })?;
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    );
    tcp.write_all(answer.as_bytes()).await.ok()?;
    Some(request)
}

/// [`accept_upgrade_with`] and nothing extra.
pub async fn accept_upgrade(tcp: &mut TcpStream) -> Option<String> {
    accept_upgrade_with(tcp, "").await
}

/// One unmasked server frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// One final text frame.
pub fn text(payload: &str) -> Vec<u8> {
    frame(true, 1, payload.as_bytes())
}

/// Reads one masked client frame; `None` at the end.
pub async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => u64::from(tcp.read_u16().await.ok()?),
        127 => tcp.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut mask = [0u8; 4];
    tcp.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    tcp.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((head[0] & 0x0f, payload))
}
