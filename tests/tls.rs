//! TLS as finance-grade gateways run it, against the reference target serving TLS with
//! certificates made here (rcgen): mutual TLS accepted, a missing client certificate and an
//! unknown CA refused and counted as `tls`, a client certificate rotated under load with no
//! established connection dropped, the handshake split by phase, `insecure_skip_verify`.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::{Path, PathBuf};

use helpers::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A certificate authority that signs server and client certificates into `dir`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wsfleet test CA {name}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = Ca {
            issuer,
            dir: dir.to_path_buf(),
        };
        std::fs::write(ca.path(&format!("{name}-ca.pem")), ca.issuer.pem()).unwrap();
        ca
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Signs a certificate for `names`, written as `{file}.pem` and `{file}.key`.
    fn sign(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A target serving `wss://` with a certificate of `ca`, requiring client certificates of
/// `ca` as well.
async fn mutual_target(ca: &Ca) -> Target {
    let (cert, key) = ca.sign("server", &["127.0.0.1", "localhost"]);
    let config =
        wsfleet::target::mutual_server_config(&cert, &key, Some(&ca.path("good-ca.pem"))).unwrap();
    Target::start_with(wsfleet::target::TargetOptions {
        tls: Some(config),
        ..Default::default()
    })
    .await
}

fn tls_config(target: &Target, users: u32, tls: &str, extra: &str) -> String {
    format!(
        "target: wss://{}/ws\nusers: {users}\nconnect_rate: 500\nmessage_interval: 200ms\n\
         reconnect: {{initial: 100ms, max: 200ms}}\ntls: {{{tls}}}\n{extra}",
        target.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_accepted_and_what_it_refuses_is_counted_as_tls() {
    let dir = tempfile::tempdir().unwrap();
    let good = Ca::new(dir.path(), "good");
    let wrong = Ca::new(dir.path(), "wrong");
    let target = mutual_target(&good).await;
    let (cert, key) = good.sign("client", &["u"]);
    let ca = good.path("good-ca.pem");

    // Accepted: connected, exchanging messages, the handshake timed phase by phase.
    let daemon = start_daemon(&tls_config(
        &target,
        10,
        &format!(
            "ca_file: {}, cert_file: {}, key_file: {}, min_version: '1.3'",
            ca.display(),
            cert.display(),
            key.display()
        ),
        "",
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    let m = scrape(api).await;
    for phase in ["dns", "tcp", "tls", "upgrade"] {
        let count = m.get(&format!(
            r#"wsfleet_connect_phase_seconds_count{{phase="{phase}"}}"#
        ));
        assert!(count >= 10.0, "{phase}: {count}");
    }
    daemon.shutdown().await.unwrap();

    // No client certificate, a certificate of another CA, a server of another CA: `tls`.
    let (stranger, stranger_key) = wrong.sign("stranger", &["u"]);
    for (what, tls) in [
        (
            "no client certificate",
            format!("ca_file: {}", ca.display()),
        ),
        (
            "a client certificate of an unknown CA",
            format!(
                "ca_file: {}, cert_file: {}, key_file: {}",
                ca.display(),
                stranger.display(),
                stranger_key.display()
            ),
        ),
        (
            "a server of an unknown CA",
            format!(
                "ca_file: {}, cert_file: {}, key_file: {}",
                wrong.path("wrong-ca.pem").display(),
                cert.display(),
                key.display()
            ),
        ),
    ] {
        let daemon = start_daemon(&tls_config(&target, 3, &tls, "")).await;
        let api = daemon.addr();
        wait_for(what, 30, || async {
            scrape(api)
                .await
                .get(r#"wsfleet_connects_total{result="tls"}"#)
                >= 3.0
        })
        .await;
        assert_eq!(scrape(api).await.get("wsfleet_users_active"), 0.0, "{what}");
        daemon.shutdown().await.unwrap();
    }
}

/// The client certificate is rotated under load: new handshakes take the new pair (a pair of an
/// unknown CA is refused, counted as `tls`, while every established connection stays up), and a
/// good pair brings handshakes back — with no established connection dropped throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_by_new_handshakes_and_drops_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let good = Ca::new(dir.path(), "good");
    let wrong = Ca::new(dir.path(), "wrong");
    let target = mutual_target(&good).await;
    let (cert, key) = good.sign("client", &["u"]);
    let live = (dir.path().join("live.pem"), dir.path().join("live.key"));
    let install = |(c, k): &(PathBuf, PathBuf)| {
        // As a rotation tool does: write aside, then rename over (atomic per file).
        for (from, to) in [(c, &live.0), (k, &live.1)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    install(&(cert, key));
    // Churn keeps handshakes coming: every connection lives 1-2 s.
    let daemon = start_daemon(&tls_config(
        &target,
        30,
        &format!(
            "ca_file: {}, cert_file: {}, key_file: {}",
            good.path("good-ca.pem").display(),
            live.0.display(),
            live.1.display()
        ),
        "lifetime: {min: 1s, max: 2s}\n",
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 30.0, 30).await;
    let failures_other_than_churn = |m: &Scrape| {
        m.sum("wsfleet_disconnects_total") - m.get(r#"wsfleet_disconnects_total{reason="churn"}"#)
    };
    // Several good rotations under load: nobody refused, nobody dropped.
    for round in 0..3 {
        install(&good.sign(&format!("client-{round}"), &["u"]));
        let churned = scrape(api)
            .await
            .get(r#"wsfleet_disconnects_total{reason="churn"}"#);
        wait_for("handshakes after the rotation", 30, || async {
            scrape(api)
                .await
                .get(r#"wsfleet_disconnects_total{reason="churn"}"#)
                >= churned + 30.0
        })
        .await;
    }
    let m = scrape(api).await;
    assert_eq!(m.get(r#"wsfleet_connects_total{result="tls"}"#), 0.0);
    assert_eq!(failures_other_than_churn(&m), 0.0);
    // A pair the server does not trust: new handshakes fail, counted; established stay.
    install(&wrong.sign("rogue", &["u"]));
    wait_for("refused handshakes after a bad rotation", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="tls"}"#)
            >= 3.0
    })
    .await;
    assert_eq!(failures_other_than_churn(&scrape(api).await), 0.0);
    // Back to a good pair: everyone returns.
    install(&good.sign("client-back", &["u"]));
    wait_active(api, 30.0, 30).await;
    assert_eq!(failures_other_than_churn(&scrape(api).await), 0.0);
    daemon.shutdown().await.unwrap();
}

/// `insecure_skip_verify` connects to a server no CA vouches for, and `server_name` asks for
/// (and verifies) a name other than the URL's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_and_server_name_override() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "own");
    let (cert, key) = ca.sign("server", &["chat.internal.test"]);
    let target = Target::start_with(wsfleet::target::TargetOptions {
        tls: Some(wsfleet::target::server_config(&cert, &key).unwrap()),
        ..Default::default()
    })
    .await;
    let insecure = start_daemon(&tls_config(&target, 3, "insecure_skip_verify: true", "")).await;
    wait_active(insecure.addr(), 3.0, 30).await;
    insecure.shutdown().await.unwrap();
    // The certificate names chat.internal.test, not 127.0.0.1: verified with the override.
    let named = start_daemon(&tls_config(
        &target,
        3,
        &format!(
            "ca_file: {}, server_name: chat.internal.test",
            ca.path("own-ca.pem").display()
        ),
        "",
    ))
    .await;
    wait_active(named.addr(), 3.0, 30).await;
    named.shutdown().await.unwrap();
    let err = wsfleet::config::Config::parse("tls: {cert_file: c.pem}\n").expect_err("no key");
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
    let err = wsfleet::config::Config::parse("tls: {min_version: '1.1'}\n").expect_err("1.1");
    assert!(err.to_string().contains("min_version"), "{err}");
}

/// The usual self-signed certificate, made by `openssl req -x509` (with `CA:TRUE`, as its
/// default config makes it), named as its own `ca_file`: before, refused as "CA used as end
/// entity" although the README says it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_self_signed_certificate_is_its_own_ca_file() {
    let Some(openssl) = tool("openssl", "the openssl command") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = wsfleet::target::mutual_server_config(&cert, &key, None).unwrap();
    let target = Target::start_with(wsfleet::target::TargetOptions {
        tls: Some(config),
        ..Default::default()
    })
    .await;
    let daemon = start_daemon(&tls_config(
        &target,
        3,
        &format!("ca_file: {}", cert.display()),
        "",
    ))
    .await;
    wait_active(daemon.addr(), 3.0, 30).await;
    daemon.shutdown().await.unwrap();
}
