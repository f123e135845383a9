//! Bearer tokens, as the control API and the reference target's admin API check them: the
//! `Authorization: Bearer <token>` header, compared in constant time so that the comparison
//! tells an attacker nothing about how much of a guess was right.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// Whether `headers` carry `token` as their bearer token.
pub fn presented(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}
