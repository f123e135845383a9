//! The client side of the WebSocket opening handshake, done here rather than by tungstenite
//! so that a held connection keeps nothing of it: tungstenite's handshake reads into a 4 KiB
//! buffer that then lives on as the socket's read buffer, and `MaybeTlsStream` reserves room
//! for an inline TLS session (~1.3 KB) even on plain `ws://`. Here TLS is boxed only when used,
//! and the response is read into a buffer that is dropped once the upgrade is checked.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use url::Url;

use super::deflate::{self, Agreed, DeflateOffer};
use super::tls::ClientTls;
use super::wire::{ConnectFailure, Stream, io_failure};
use crate::metrics::ConnectResult;

/// Largest upgrade response accepted (headers included).
const MAX_RESPONSE: usize = 16 * 1024;

/// Wraps `tcp` in TLS when the URL is `wss://`, `tls://`, `https://` or `sse+https://`, asking for the URL's host (or
/// `tls.server_name`).
pub async fn secure(tcp: TcpStream, url: &Url, tls: &ClientTls) -> Result<Stream, ConnectFailure> {
    if !matches!(url.scheme(), "wss" | "tls" | "https" | "sse+https") {
        return Ok(Stream::Plain(tcp));
    }
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => {
            let host = url
                .host_str()
                .ok_or(ConnectResult::Dns)?
                .trim_matches(['[', ']']);
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|err| {
                ConnectFailure::new(
                    ConnectResult::Tls,
                    format!("`{host}` is no TLS server name: {err}"),
                )
            })?
        }
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(name, tcp)
        .await
        .map_err(|err| ConnectFailure::new(ConnectResult::Tls, format!("TLS with {url}: {err}")))?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A WebSocket the server accepted.
pub struct Upgraded {
    /// Bytes the server sent after its headers (the start of the first frames), to be read
    /// first.
    pub early: Vec<u8>,
    /// The permessage-deflate agreement, when one was offered and taken.
    pub deflate: Option<Agreed>,
}

/// Sends the upgrade request — with the permessage-deflate `offer`, if any — and checks the
/// server's 101 answer.
pub async fn upgrade(
    stream: &mut Stream,
    url: &Url,
    headers: &[(String, String)],
    offer: Option<&DeflateOffer>,
) -> Result<Upgraded, ConnectFailure> {
    let key = generate_key();
    let mut headers = headers.to_vec();
    if let Some(offer) = offer {
        headers.push(("Sec-WebSocket-Extensions".into(), offer.header()));
    }
    let headers = &headers[..];
    let request = request(url, &key, headers)?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_failure(&e, "sending the upgrade request"))?;

    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_failure(&e, "reading the upgrade answer"))?;
        if n == 0 {
            return Err(ConnectFailure::new(
                ConnectResult::Protocol,
                format!("{url} closed the connection instead of answering the upgrade"),
            ));
        }
        response.extend_from_slice(&chunk[..n]);
        let mut parsed_headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut parsed_headers);
        match parsed.parse(&response) {
            Ok(httparse::Status::Complete(end)) => {
                let invalid = |why: String| {
                    ConnectFailure::new(
                        ConnectResult::Protocol,
                        format!("{url} answered the upgrade {why}"),
                    )
                };
                check(&parsed, &key, headers).map_err(|answer| match answer {
                    Answer::Refused => refusal(&parsed, url),
                    Answer::Invalid(why) => invalid(why),
                })?;
                return Ok(Upgraded {
                    early: response[end..].to_vec(),
                    deflate: deflate_answer(&parsed, offer).map_err(invalid)?,
                });
            }
            Ok(httparse::Status::Partial) if response.len() < MAX_RESPONSE => {}
            _ => {
                return Err(ConnectFailure::new(
                    ConnectResult::Protocol,
                    format!("{url} answered the upgrade with no valid HTTP response"),
                ));
            }
        }
    }
}

/// Longest `Retry-After` honoured: a server cannot park a user for longer.
pub const MAX_RETRY_AFTER: std::time::Duration = crate::load::MAX_TIMEOUT;

/// A refused upgrade: its status, and the server's `Retry-After` (seconds or an HTTP date),
/// which the user's next attempt honours.
fn refusal(response: &httparse::Response<'_, '_>, url: &Url) -> ConnectFailure {
    let status = response.code.unwrap_or(0);
    let retry_after = header(response, "retry-after").and_then(parse_retry_after);
    let mut failure = ConnectFailure::new(
        ConnectResult::HttpStatus,
        format!(
            "HTTP {status} {} for {url}{}",
            response.reason.unwrap_or(""),
            retry_after.map_or(String::new(), |wait| format!(
                " (Retry-After: {})",
                humantime::format_duration(wait)
            ))
        ),
    );
    failure.status = Some(status);
    failure.retry_after = retry_after;
    failure
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, bounded.
pub(super) fn parse_retry_after(value: &str) -> Option<std::time::Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => std::time::Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn header<'h>(response: &httparse::Response<'_, 'h>, name: &str) -> Option<&'h str> {
    response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn request(url: &Url, key: &str, headers: &[(String, String)]) -> Result<String, ConnectResult> {
    use std::fmt::Write;
    let host = url.host_str().ok_or(ConnectResult::Dns)?;
    let mut request = String::with_capacity(256);
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let _ = write!(
        request,
        "GET {} HTTP/1.1\r\nHost: {host}",
        if path.is_empty() { "/" } else { path }
    );
    if let Some(port) = url.port() {
        let _ = write!(request, ":{port}");
    }
    let _ = write!(
        request,
        "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    for (name, value) in headers {
        if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
            return Err(ConnectResult::Protocol);
        }
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    Ok(request)
}

/// Why an upgrade answer is not taken.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Not 101: the server refused (its status is counted).
    Refused,
    /// A 101 that breaks RFC 6455 4.1; says how.
    Invalid(String),
}

/// A valid answer is 101 with `Upgrade: websocket`, `Connection: upgrade` and the accept key
/// derived from ours, and chooses no subprotocol or extension we did not offer in `sent`
/// headers (RFC 6455 4.1: the client must then fail the connection; a frame format it did
/// not ask for would be misread).
fn check(
    response: &httparse::Response<'_, '_>,
    key: &str,
    sent: &[(String, String)],
) -> Result<(), Answer> {
    if response.code != Some(101) {
        return Err(Answer::Refused);
    }
    let header = |name: &str| header(response, name);
    let upgrade_ok = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection_ok = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let accept_ok =
        header("sec-websocket-accept") == Some(derive_accept_key(key.as_bytes()).as_str());
    if !(upgrade_ok && connection_ok && accept_ok) {
        return Err(Answer::Invalid("without a valid WebSocket accept".into()));
    }
    for (name, what) in [
        ("sec-websocket-protocol", "subprotocol"),
        ("sec-websocket-extensions", "extension"),
    ] {
        let offered = |token: &str| {
            sent.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .any(|o| token_name(o).eq_ignore_ascii_case(token_name(token)))
        };
        for chosen in response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .filter(|t| !t.trim().is_empty())
        {
            if !offered(chosen) {
                return Err(Answer::Invalid(format!(
                    "with the {what} `{}`, which was not offered (RFC 6455 4.1)",
                    crate::failures::truncate(chosen.trim(), 80)
                )));
            }
        }
    }
    Ok(())
}

/// The server's permessage-deflate answer read against our offer. An extension chosen
/// without our offer (a scenario's own `Sec-WebSocket-Extensions` header) cannot be spoken.
fn deflate_answer(
    response: &httparse::Response<'_, '_>,
    offer: Option<&DeflateOffer>,
) -> Result<Option<Agreed>, String> {
    let mut chosen = response
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .filter(|t| token_name(t).eq_ignore_ascii_case(deflate::EXTENSION));
    let Some(answer) = chosen.next() else {
        return Ok(None);
    };
    let Some(offer) = offer else {
        return Err(format!(
            "with {}, which wsfleet speaks only when the config says `compression: deflate`",
            deflate::EXTENSION
        ));
    };
    if chosen.next().is_some() {
        return Err(format!("with {} twice", deflate::EXTENSION));
    }
    Agreed::parse(offer, answer.trim())
        .map(Some)
        .map_err(|why| format!("with an invalid {} ({why})", deflate::EXTENSION))
}

/// An offered or chosen token without its parameters: `permessage-deflate; x=1` is
/// `permessage-deflate`.
fn token_name(token: &str) -> &str {
    token.split(';').next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_path_query_port_and_headers() {
        let url = Url::parse("ws://chat.test:8080/socket?room=1").expect("url");
        let text =
            request(&url, "KEY", &[("Authorization".into(), "Bearer t".into())]).expect("request");
        assert!(
            text.starts_with("GET /socket?room=1 HTTP/1.1\r\nHost: chat.test:8080\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Sec-WebSocket-Key: KEY\r\n")
                && text.contains("Authorization: Bearer t\r\n")
        );
        assert!(text.ends_with("\r\n\r\n"));
        let injected = request(&url, "KEY", &[("X".into(), "a\r\nEvil: 1".into())]);
        assert_eq!(
            injected.err(),
            Some(ConnectResult::Protocol),
            "no header injection"
        );
    }

    #[test]
    fn only_a_proper_101_is_accepted() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let parse_and_check = |raw: &str| {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            response.parse(raw.as_bytes()).expect("parses");
            check(
                &response,
                key,
                &[("Sec-WebSocket-Protocol".into(), "mqtt, mqttv3.1".into())],
            )
        };
        let good = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(parse_and_check(good), Ok(()));
        assert_eq!(
            parse_and_check("HTTP/1.1 403 Forbidden\r\n\r\n"),
            Err(Answer::Refused)
        );
        let wrong_key = good.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "nope");
        assert!(matches!(
            parse_and_check(&wrong_key),
            Err(Answer::Invalid(_))
        ));
        let with = |extra: &str| good.replace("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"));
        assert_eq!(
            parse_and_check(&with("Sec-WebSocket-Protocol: mqtt")),
            Ok(())
        );
        // Before, any of these was taken, and frames were then read in a format not asked for.
        for unasked in [
            "Sec-WebSocket-Protocol: chat",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ] {
            let answer = parse_and_check(&with(unasked));
            assert!(
                matches!(&answer, Err(Answer::Invalid(why)) if why.contains("not offered")),
                "{unasked}: {answer:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_bounded() {
        use std::time::{Duration, SystemTime};
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("99999999"), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = parse_retry_after(&soon).expect("a date");
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(parse_retry_after("soon"), None);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\n")
            .expect("parses");
        let url = Url::parse("ws://chat.test/ws").expect("url");
        let failure = refusal(&response, &url);
        assert_eq!(failure.status, Some(429));
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        assert!(
            failure.detail.contains("HTTP 429 Too Many Requests"),
            "{}",
            failure.detail
        );
    }
}
