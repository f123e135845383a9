//! The client side of TLS for `wss://` and `tls://` targets, as finance-grade gateways run it:
//! the public web roots plus a CA file, TLS 1.2+ or 1.3 only, a server-name (SNI) override,
//! client certificates for mutual TLS — re-read when their files change, so a rotated pair is
//! used by the next handshake while established connections stay up — and, for rehearsals
//! only, no verification at all (logged as a warning).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::settings::{TlsConfig, TlsVersion};

/// How often the client certificate's files are looked at for a rotation, at most.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// What every TLS handshake of the fleet uses.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name to ask for and verify instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
}

/// Builds the client side from the `tls:` settings (paths relative to `base_dir`); the error
/// names the field.
pub fn client(settings: &TlsConfig, base_dir: &Path) -> Result<ClientTls, (&'static str, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => rustls::DEFAULT_VERSIONS,
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|err| ("tls.min_version", err.to_string()))?;
    let builder = if settings.insecure_skip_verify {
        tracing::warn!(
            "tls.insecure_skip_verify: server certificates are NOT verified; never use this outside a rehearsal"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck {
                provider: Arc::clone(&provider),
                chain: None,
            }))
    } else {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut pinned = Vec::new();
        if let Some(path) = &settings.ca_file {
            pinned = read_certs(&base_dir.join(path)).map_err(|e| ("tls.ca_file", e))?;
            let (added, ignored) = roots.add_parsable_certificates(pinned.iter().cloned());
            if ignored > 0 {
                tracing::warn!(
                    added,
                    ignored,
                    "some tls.ca_file certificates could not be used"
                );
            }
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|err| ("tls.ca_file", err.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCheck {
                provider: Arc::clone(&provider),
                chain: Some(Chain { webpki, pinned }),
            }))
    };
    let config = match (&settings.cert_file, &settings.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let pair = Arc::new(
                RotatingKey::load(base_dir.join(cert), base_dir.join(key), provider)
                    .map_err(|e| ("tls.cert_file", e))?,
            );
            let mut config = builder.with_client_cert_resolver(Arc::clone(&pair) as _);
            config.resumption = rustls::client::Resumption::store(pair);
            config
        }
        _ => {
            return Err((
                "tls.cert_file",
                "a client certificate needs both `cert_file` and `key_file`".into(),
            ));
        }
    };
    let server_name = settings
        .server_name
        .as_deref()
        .map(|name| {
            ServerName::try_from(name.to_string())
                .map_err(|err| ("tls.server_name", format!("`{name}`: {err}")))
        })
        .transpose()?;
    Ok(ClientTls {
        config: Arc::new(config),
        server_name,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = crate::files::read_bytes(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("`{}` is not PEM: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A client certificate and key, re-read when either file changes — and the TLS sessions
/// resumed with it: a resumed session does not present the certificate again, so a rotation
/// forgets them (and is looked for at resumption as well as at a full handshake), or new
/// connections would go on as the old identity.
#[derive(Debug)]
struct RotatingKey {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    sessions: Sessions,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    pair: Arc<CertifiedKey>,
    /// The files' modification times when `pair` was read.
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl RotatingKey {
    fn load(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<RotatingKey, String> {
        let stamps = (modified(&cert), modified(&key));
        let pair = read_pair(&cert, &key, &provider)?;
        Ok(RotatingKey {
            cert,
            key,
            provider,
            sessions: Sessions::default(),
            state: Mutex::new(Loaded {
                pair,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present: re-read if a file changed since (checked once a second at most).
    /// A pair that does not load (a rotation half written) keeps the previous one in use.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= ROTATION_CHECK {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                match read_pair(&self.cert, &self.key, &self.provider) {
                    Ok(pair) => {
                        tracing::info!(cert = %self.cert.display(), "client certificate rotated");
                        state.pair = pair;
                        state.stamps = stamps;
                        self.sessions.forget();
                    }
                    Err(err) => tracing::warn!(%err, "client certificate not rotated (yet)"),
                }
            }
        }
        Arc::clone(&state.pair)
    }
}

impl ResolvesClientCert for RotatingKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert)?;
    let pem = crate::files::read_bytes(key, crate::files::MAX_CONFIG_BYTES)
        .map_err(|err| format!("cannot read `{}`: {err}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|err| format!("`{}`: no private key: {err}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("unusable private key: {err}"))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .map_err(|err| format!("the key does not belong to the certificate: {err}"))?;
    Ok(Arc::new(pair))
}

/// Session resumption (rustls' in-memory cache) that can forget every session at once.
#[derive(Debug)]
struct Sessions(Mutex<Arc<rustls::client::ClientSessionMemoryCache>>);

/// As many sessions as rustls keeps by default.
const SESSIONS: usize = 256;

impl Default for Sessions {
    fn default() -> Self {
        Sessions(Mutex::new(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(SESSIONS),
        )))
    }
}

impl Sessions {
    fn cache(&self) -> Arc<rustls::client::ClientSessionMemoryCache> {
        Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(rustls::client::ClientSessionMemoryCache::new(SESSIONS));
    }
}

impl rustls::client::ClientSessionStore for RotatingKey {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.sessions.cache().set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions.cache().kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions.cache().set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.current();
        self.sessions.cache().tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.sessions.cache().remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.sessions.cache().insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.current();
        self.sessions.cache().take_tls13_ticket(name)
    }
}

/// How server certificates are judged. `chain`: the usual verification against the roots,
/// plus one case it refuses that users expect to work — the server presents exactly a
/// certificate of `tls.ca_file`. `openssl req -x509` makes such a self-signed certificate with
/// `CA:TRUE`, which webpki will not take as the server's own ("CA used as end entity"); it is
/// trusted here because it is byte for byte one the user named, for the names it holds (its
/// validity period is not checked in that case). Without `chain` (`insecure_skip_verify`) any
/// certificate is accepted. Handshake signatures are checked either way, so the handshake
/// itself is sound.
#[derive(Debug)]
struct ServerCheck {
    provider: Arc<CryptoProvider>,
    chain: Option<Chain>,
}

#[derive(Debug)]
struct Chain {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let verified =
            chain
                .webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verified {
            Err(_)
                if chain
                    .pinned
                    .iter()
                    .any(|pin| pin.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::ClientSessionStore;

    /// A rotated pair is read at the next look (a second later at most), and the sessions of
    /// the old one are forgotten.
    #[test]
    fn a_rotated_pair_is_read_and_its_old_sessions_forgotten() {
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            std::fs::write(dir.path().join("c.pem"), cert.pem()).expect("write");
            std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).expect("write");
            cert.der().to_vec()
        };
        let first = write("a");
        let pair = RotatingKey::load(
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .expect("loads");
        assert_eq!(pair.current().cert[0].to_vec(), first);
        let name = ServerName::try_from("chat.test").expect("name");
        pair.set_kx_hint(name.clone(), rustls::NamedGroup::X25519);
        let second = write("b");
        // The rotation is looked for once a second: wait that out (real files, real time).
        pair.state.lock().expect("state").checked -= ROTATION_CHECK;
        assert_eq!(pair.current().cert[0].to_vec(), second);
        assert_eq!(pair.kx_hint(&name), None, "the old sessions are gone");
        std::fs::write(dir.path().join("k.pem"), "half written").expect("write");
        pair.state.lock().expect("state").checked -= ROTATION_CHECK;
        assert_eq!(
            pair.current().cert[0].to_vec(),
            second,
            "a pair that does not load keeps the last good one"
        );
    }
}
