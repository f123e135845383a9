//! What keeps a web page from steering the fleet: the daemon's API has no token by default
//! and listens on loopback, where any page a person opens in a browser can reach it.
//!
//! - **Host** (DNS rebinding: a name of the attacker's that resolves to 127.0.0.1): a request
//!   must name the daemon by an IP address, `localhost`, or a name in `api.allowed_hosts`.
//!   `/metrics` and `/healthz` are exempt: scrapers and probes call them by service name, and
//!   they carry nothing secret and change nothing.
//! - **Cross-site writes** (CSRF): a state-changing call (POST, PUT, PATCH, DELETE) is refused
//!   when it carries an `Origin` other than the daemon's own (browsers send `Origin` with
//!   every cross-origin call of these methods, even `no-cors` ones) or one of the
//!   content types a form or a `no-cors` fetch can send without asking first
//!   (`text/plain`, `application/x-www-form-urlencoded`, `multipart/form-data`). Calls from
//!   curl, `wsfleet ctl` and the live page carry neither and pass.
//! - **Headers** on every answer: the page may be framed by nobody and runs only its own
//!   inline code (`Content-Security-Policy`), and nothing is sniffed into another type.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};

/// The page and report are self-contained: inline script and style, calls to this origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Who may call, from the config's `api:` section.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Host names (without port) accepted besides IP addresses and `localhost`; `*` is any.
    pub hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) whose pages may change the load besides the daemon's.
    pub origins: Vec<String>,
}

impl Allowed {
    fn host(&self, host: &str) -> bool {
        let name = host_name(host);
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<std::net::IpAddr>().is_ok()
            || self
                .hosts
                .iter()
                .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(name))
    }

    fn origin(&self, origin: &str, host: &str) -> bool {
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host));
        own || self
            .origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// `host[:port]` or `[v6]:port` without its port and brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The middleware: refuses what a foreign page could send, and sets the security headers.
pub async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Err(refused) = check(
        &state.allowed,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        return refused.into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn check(
    allowed: &Allowed,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST).unwrap_or("");
    let open_to_any_host = matches!(path, "/metrics" | "/healthz");
    if !open_to_any_host && !allowed.host(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host `{}` is not this daemon's: call it by IP address or localhost, or add the name to api.allowed_hosts",
                crate::failures::truncate(host, 100)
            ),
        ));
    }
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !changes_state {
        return Ok(());
    }
    if let Some(origin) = text(header::ORIGIN)
        && !allowed.origin(origin, host)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a page from `{}` may not change this daemon (add it to api.allowed_origins to allow it)",
                crate::failures::truncate(origin, 100)
            ),
        ));
    }
    let content_type = text(header::CONTENT_TYPE)
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if matches!(
        essence,
        "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
    ) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "calls that change the daemon take application/json (or no body), not {essence}: any web page can send {essence} across sites"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn hosts_are_addresses_localhost_or_allowed_names() {
        let allowed = Allowed {
            hosts: vec!["wsfleet.staging".into()],
            origins: vec![],
        };
        for ok in [
            "127.0.0.1:9750",
            "[::1]:9750",
            "localhost:9750",
            "10.1.2.3",
            "wsfleet.staging:9750",
        ] {
            assert!(allowed.host(ok), "{ok}");
        }
        for refused in ["evil.example:9750", "127.0.0.1.evil.example", ""] {
            assert!(!allowed.host(refused), "{refused}");
        }
    }

    #[test]
    fn a_foreign_page_cannot_change_anything_and_tools_can() {
        let allowed = Allowed::default();
        let post = Method::POST;
        let host = ("host", "127.0.0.1:9750");
        assert!(
            check(&allowed, &post, "/api/v1/pause", &headers(&[host])).is_ok(),
            "curl"
        );
        assert!(
            check(
                &allowed,
                &post,
                "/api/v1/pause",
                &headers(&[host, ("origin", "http://127.0.0.1:9750")])
            )
            .is_ok(),
            "the live page"
        );
        let foreign = check(
            &allowed,
            &post,
            "/api/v1/pause",
            &headers(&[host, ("origin", "http://127.0.0.2:8000")]),
        );
        assert!(foreign.is_err_and(|e| e.status == StatusCode::FORBIDDEN));
        let form = check(
            &allowed,
            &post,
            "/api/v1/pause",
            &headers(&[host, ("content-type", "text/plain;charset=UTF-8")]),
        );
        assert!(form.is_err_and(|e| e.status == StatusCode::UNSUPPORTED_MEDIA_TYPE));
        let rebound = check(
            &allowed,
            &Method::GET,
            "/api/v1/status",
            &headers(&[("host", "evil.example:9750")]),
        );
        assert!(rebound.is_err_and(|e| e.status == StatusCode::FORBIDDEN));
        assert!(
            check(
                &allowed,
                &Method::GET,
                "/metrics",
                &headers(&[("host", "wsfleet:9750")])
            )
            .is_ok()
        );
    }
}
