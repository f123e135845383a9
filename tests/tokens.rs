//! Tokens minted per connection, against a server that verifies them with PyJWT
//! (`tests/servers/jwt_server.py`, run from the test venv that scripts/test makes): HS256 and
//! RS256 signatures, an expired token refused, and refreshes that keep a connection alive
//! longer than any one token lives.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use helpers::*;

/// The JWT server, verifying with `key` (`--secret S` or `--public-key FILE`).
async fn jwt_server(key: &[&str], dir: tempfile::TempDir) -> Option<(SocketAddr, ServerProcess)> {
    let python = venv_python("jwt, websockets")?;
    let addr = free_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/jwt_server.py");
    let port = addr.port().to_string();
    let mut args = vec![script.to_str().unwrap(), "--port", &port];
    args.extend_from_slice(key);
    let server = ServerProcess::spawn(&python, &args, dir, &[addr]).await;
    Some((addr, server))
}

/// A fleet whose login sends the token `jwt` (as `tokens:` describes it) and pings.
fn fleet(server: SocketAddr, users: u32, tokens: &str, extra: &str) -> String {
    format!(
        r#"target: ws://{server}/
users: {users}
connect_rate: 100
message_interval: 0s
heartbeat: {{interval: 2s, timeout: 5s}}
reconnect: {{initial: 200ms, max: 1s}}
scenario:
  tokens: {{jwt: {tokens}}}
  login:
    - send: '{{"type":"login","user":"{{{{user_id}}}}","token":"{{{{jwt}}}}"}}'
      expect: {{pointer: /type, equals: login_ok}}
      reject: {{pointer: /type, equals: error}}
  heartbeat:
    send: '{{"type":"ping","ts":{{{{ts}}}}}}'
    expect: {{pointer: /type, equals: pong}}
{extra}"#
    )
}

/// An HS256 secret as long as RFC 7518 asks (32 bytes).
const SECRET: &str = "a-shared-secret-of-32-bytes-or-more";

fn disconnects(scrape: &Scrape) -> f64 {
    scrape.sum("wsfleet_disconnects_total")
}

/// 30-second HS256 tokens refreshed every 20 s keep every user connected for two minutes:
/// the server closes any connection whose token expires, so each refresh was verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_hs256_tokens_keep_a_two_minute_run_connected() {
    let dir = tempfile::tempdir().unwrap();
    let Some((addr, _server)) = jwt_server(&["--secret", SECRET], dir).await else {
        return;
    };
    let refresh = r#"  refresh:
    every: 20s
    send: '{"type":"refresh","token":"{{jwt}}"}'
    expect: {pointer: /type, equals: refreshed}
"#;
    let yaml = fleet(
        addr,
        5,
        &format!(
            r#"{{alg: HS256, secret: {SECRET}, claims: '{{"sub":"{{{{user_id}}}}"}}', expires_in: 30s}}"#
        ),
        refresh,
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_active(api, 5.0, 30).await;
    // The run's length is what is tested: four token lifetimes.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let scraped = scrape(api).await;
    assert_eq!(disconnects(&scraped), 0.0, "nobody's token expired");
    assert_eq!(scraped.get(r#"wsfleet_connects_total{result="ok"}"#), 5.0);
    assert!(
        scraped.get("wsfleet_token_refreshes_total") >= 25.0,
        "six refreshes each: {}",
        scraped.get("wsfleet_token_refreshes_total")
    );
    assert_eq!(scraped.get("wsfleet_token_refresh_failures_total"), 0.0);
    daemon.finish().await.unwrap();
}

/// RS256 tokens verified by the server's public key; without a refresh each connection lasts
/// as long as its token (the server closes it) and the next connect mints a fresh one. A token
/// whose claims say it expired long ago is refused at login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_verified_and_expired_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "openssl {args:?}");
    };
    if tool("openssl", "openssl (scripts/protocol-tools installs it)").is_none() {
        return;
    }
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let key_file = key.display().to_string();
    let public_key = public.display().to_string();
    let Some((addr, _server)) = jwt_server(&["--public-key", &public_key], dir).await else {
        return;
    };
    let yaml = fleet(
        addr,
        3,
        &format!(
            r#"{{alg: RS256, key_file: {key_file}, claims: '{{"sub":"{{{{user_id}}}}"}}', expires_in: 2s}}"#
        ),
        "",
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_for("tokens expiring and fresh ones admitted", 60, || async {
        let scraped = scrape(api).await;
        scraped.get(r#"wsfleet_disconnects_total{reason="server_close"}"#) >= 3.0
            && scraped.get(r#"wsfleet_connects_total{result="ok"}"#) >= 6.0
    })
    .await;
    assert_eq!(
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#),
        0.0,
        "every RS256 token verified"
    );
    daemon.finish().await.unwrap();

    let expired = fleet(
        addr,
        2,
        r#"{alg: RS256, key_file: KEY, claims: '{"sub":"{{user_id}}","exp":1000}', expires_in: 30s}"#
            .replace("KEY", &key_file)
            .as_str(),
        "",
    );
    let daemon = start_daemon(&expired).await;
    let api = daemon.addr();
    wait_for("expired tokens refused", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#)
            >= 2.0
    })
    .await;
    assert_eq!(
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="ok"}"#),
        0.0
    );
    daemon.finish().await.unwrap();
}
