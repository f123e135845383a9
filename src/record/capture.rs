//! Reading a captured session: a HAR 1.2 file (Chromium's or Firefox's devtools export, whose
//! WebSocket entries carry `_webSocketMessages`) or JSON lines of `{dir, time, data}`.
//!
//! The HAR is read with serde structs of our own: the `har` crate's model has no
//! `_webSocketMessages`, the one part of the file this needs.

use base64::Engine;
use serde::Deserialize;

/// Who sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Sent,
    Received,
}

/// One captured frame: its time in seconds from the capture's first frame, and what it
/// carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub dir: Dir,
    pub at: f64,
    pub data: Data,
}

/// A frame's payload: a text frame's text, or a binary frame's bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    /// The frame's text (empty for a binary frame).
    pub fn text(&self) -> &str {
        match &self.data {
            Data::Text(text) => text,
            Data::Binary(_) => "",
        }
    }

    pub fn is_binary(&self) -> bool {
        matches!(self.data, Data::Binary(_))
    }
}

/// A captured WebSocket session: where it went, the handshake's headers, and its frames.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capture {
    pub url: Option<String>,
    pub headers: Vec<(String, String)>,
    pub frames: Vec<Frame>,
    /// The WebSocket sessions the file holds (a HAR of a page with several sockets): the URL
    /// of each, in order, without its query (which may carry a token).
    pub sessions: Vec<String>,
}

#[derive(Deserialize)]
struct Har {
    log: HarLog,
}

#[derive(Deserialize)]
struct HarLog {
    entries: Vec<HarEntry>,
}

#[derive(Deserialize)]
struct HarEntry {
    request: HarRequest,
    #[serde(default, rename = "_webSocketMessages")]
    messages: Option<Vec<HarMessage>>,
}

#[derive(Deserialize)]
struct HarRequest {
    url: String,
    #[serde(default)]
    headers: Vec<HarHeader>,
}

#[derive(Deserialize)]
struct HarHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct HarMessage {
    #[serde(rename = "type")]
    kind: String,
    time: f64,
    #[serde(default = "text_opcode")]
    opcode: u8,
    data: String,
}

fn text_opcode() -> u8 {
    1
}

/// One line of a JSON-lines capture: a frame (`binary: true` when its `data` is base64), or
/// (any line) the session's `url` and `headers`.
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    time: Option<f64>,
    #[serde(default)]
    data: Option<String>,
    /// `data` is a binary frame's bytes, in base64.
    #[serde(default)]
    binary: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Reads `text`, a HAR or JSON lines, into the WebSocket session numbered `session` (from 1,
/// in the HAR's order; JSON lines hold one).
pub fn read(text: &str, session: usize) -> Result<Capture, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && trimmed.contains("\"log\"")
        && let Ok(har) = serde_json::from_str::<Har>(text)
    {
        return from_har(har, session);
    }
    if session != 1 {
        return Err(format!(
            "JSON lines hold one WebSocket session; session {session} was asked for"
        ));
    }
    from_lines(text)
}

fn from_har(har: Har, session: usize) -> Result<Capture, String> {
    let mut entries: Vec<HarEntry> = har
        .log
        .entries
        .into_iter()
        .filter(|e| e.messages.as_ref().is_some_and(|m| !m.is_empty()))
        .collect();
    if entries.is_empty() {
        return Err("the HAR has no WebSocket entry with messages (`_webSocketMessages`): export it from devtools after the session, with the page still open".into());
    }
    // Without their queries: another session's token is no secret this one knows of.
    let sessions: Vec<String> = entries
        .iter()
        .map(|e| {
            let url = &e.request.url;
            url.split(['?', '#']).next().unwrap_or(url).to_string()
        })
        .collect();
    if !(1..=entries.len()).contains(&session) {
        return Err(format!(
            "the HAR holds {} WebSocket session(s) with messages ({}); session {session} was asked for",
            entries.len(),
            sessions.join(", ")
        ));
    }
    let entry = entries.swap_remove(session - 1);
    let start = entry
        .messages
        .as_ref()
        .and_then(|m| m.first())
        .map_or(0.0, |m| m.time);
    let mut frames = Vec::new();
    for (i, message) in entry.messages.unwrap_or_default().into_iter().enumerate() {
        let dir = match message.kind.as_str() {
            "send" => Dir::Sent,
            "receive" => Dir::Received,
            other => {
                return Err(format!(
                    "message {i}: type {other:?} is neither send nor receive"
                ));
            }
        };
        let data = payload(message.data, message.opcode == 2)
            .map_err(|err| format!("message {i}: {err}"))?;
        frames.push(Frame {
            dir,
            at: message.time - start,
            data,
        });
    }
    Ok(Capture {
        url: Some(entry.request.url),
        headers: entry
            .request
            .headers
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect(),
        frames,
        sessions,
    })
}

/// A frame's payload as captured: text, or base64 of a binary frame's bytes.
fn payload(data: String, binary: bool) -> Result<Data, String> {
    if !binary {
        return Ok(Data::Text(data));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map(Data::Binary)
        .map_err(|err| format!("binary data is not base64: {err}"))
}

fn from_lines(text: &str) -> Result<Capture, String> {
    let mut capture = Capture::default();
    let mut start = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(line).map_err(|err| {
            format!(
                "line {}: neither a HAR nor JSON lines of {{dir, time, data}}: {err}",
                n + 1
            )
        })?;
        if line.url.is_some() {
            capture.url = line.url;
        }
        capture.headers.extend(line.headers);
        let (Some(dir), Some(data)) = (line.dir, line.data) else {
            continue;
        };
        let dir = match dir.as_str() {
            "send" | "sent" | "out" | ">" => Dir::Sent,
            "receive" | "received" | "recv" | "in" | "<" => Dir::Received,
            other => {
                return Err(format!(
                    "line {}: dir {other:?} is none of send, receive (out, in)",
                    n + 1
                ));
            }
        };
        let time = line.time.unwrap_or(0.0);
        let start = *start.get_or_insert(time);
        capture.frames.push(Frame {
            dir,
            at: time - start,
            data: payload(data, line.binary).map_err(|err| format!("line {}: {err}", n + 1))?,
        });
    }
    if capture.frames.is_empty() {
        return Err("the capture holds no frames".into());
    }
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_har_gives_its_websocket_entry_and_json_lines_their_frames() {
        let har = r#"{"log":{"version":"1.2","entries":[
          {"request":{"url":"http://h/page","headers":[]}},
          {"request":{"url":"ws://h/ws","headers":[{"name":"Origin","value":"http://h"}]},
           "_webSocketMessages":[{"type":"send","time":10.5,"opcode":1,"data":"a"},
                                 {"type":"receive","time":10.75,"opcode":2,"data":"Yg=="}]},
          {"request":{"url":"ws://h/peer","headers":[]},
           "_webSocketMessages":[{"type":"send","time":11,"opcode":1,"data":"p"}]}]}}"#;
        let capture = read(har, 1).expect("as captured");
        assert_eq!(capture.sessions, ["ws://h/ws", "ws://h/peer"]);
        assert_eq!(capture.url.as_deref(), Some("ws://h/ws"));
        assert_eq!(capture.headers, vec![("Origin".into(), "http://h".into())]);
        assert_eq!(capture.frames[1].data, Data::Binary(b"b".to_vec()));
        assert_eq!(capture.frames[0].text(), "a");
        assert_eq!(capture.frames[1].at, 0.25);
        let peer = read(har, 2).expect("the second socket");
        assert_eq!(peer.url.as_deref(), Some("ws://h/peer"));
        assert_eq!(peer.frames[0].text(), "p");
        let err = read(har, 3).expect_err("two sessions");
        assert!(
            err.contains("holds 2") && err.contains("ws://h/peer"),
            "{err}"
        );

        let lines = "{\"url\":\"ws://h/\"}\n{\"dir\":\"out\",\"time\":3,\"data\":\"x\"}\n\n{\"dir\":\"in\",\"time\":4,\"data\":\"wMA=\",\"binary\":true}\n";
        let capture = read(lines, 1).expect("as captured");
        assert!(read(lines, 2).is_err(), "JSON lines hold one session");
        assert_eq!(capture.frames.len(), 2);
        assert_eq!(capture.frames[1].data, Data::Binary(vec![0xc0, 0xc0]));
        assert_eq!(capture.frames[1].dir, Dir::Received);
        assert_eq!(capture.frames[1].at, 1.0);
        assert!(
            read("{\"dir\":\"up\",\"data\":\"x\"}", 1)
                .expect_err("an error")
                .contains("up")
        );
        assert!(
            read("not json", 1)
                .expect_err("an error")
                .contains("line 1")
        );
    }
}
