//! Tokens minted for each connection — a JWT signed with HS256 or RS256, its claims a
//! template, `iat` and `exp` set from the wall clock — and the refresh rule that sends fresh
//! ones while a connection lasts, so a soak of days outlives tokens of minutes. Signing is
//! `jsonwebtoken`'s.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::matcher::Matcher;
use super::spec::{TokenAlg, TokenSpec};
use super::template::{Names, Template, Values};

/// One token variable, compiled.
#[derive(Clone)]
pub struct Token {
    /// The variable it is.
    pub name: String,
    /// Its place among the custom variables' values.
    pub slot: usize,
    header: Header,
    key: EncodingKey,
    claims: Template,
    expires_in: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("slot", &self.slot)
            .field("alg", &self.header.alg)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Sending fresh tokens every `every`: `send` rendered with them, `expect` awaited for at
/// most `timeout`.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub every: Duration,
    pub send: Template,
    pub expect: Option<Matcher>,
    pub timeout: Duration,
}

impl Token {
    /// The token `spec` for custom variable `slot`; its claims may use `names`. Keys are read
    /// relative to `base_dir`. The error names what is wrong.
    pub fn compile(
        name: &str,
        spec: &TokenSpec,
        slot: usize,
        names: &Names,
        base_dir: &Path,
    ) -> Result<Token, String> {
        let (alg, key) = match (spec.alg, &spec.secret, &spec.key_file) {
            (TokenAlg::HS256, Some(secret), None) => {
                if secret.is_empty() {
                    return Err("`secret` is empty".into());
                }
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(secret.as_bytes()),
                )
            }
            (TokenAlg::RS256, None, Some(file)) => {
                let path = base_dir.join(file);
                let pem = std::fs::read(&path)
                    .map_err(|err| format!("key_file {}: {err}", path.display()))?;
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|err| {
                    format!(
                        "key_file {}: not an RSA private key in PEM: {err}",
                        path.display()
                    )
                })?;
                (Algorithm::RS256, key)
            }
            (TokenAlg::HS256, _, _) => {
                return Err("HS256 signs with a `secret` (and no `key_file`)".into());
            }
            (TokenAlg::RS256, _, _) => {
                return Err("RS256 signs with a `key_file` (and no `secret`)".into());
            }
        };
        if spec.expires_in.is_zero() || spec.expires_in > Duration::from_secs(366 * 86_400) {
            return Err("`expires_in` must be between 1s and a year".into());
        }
        let mut header = Header::new(alg);
        header.kid = spec.kid.clone();
        Ok(Token {
            name: name.to_string(),
            slot,
            header,
            key,
            claims: Template::compile(&spec.claims, names)
                .map_err(|err| format!("claims: {err}"))?,
            expires_in: spec.expires_in,
        })
    }

    /// A fresh token: the claims rendered with `values`, `iat` now and `exp` now plus
    /// `expires_in` unless the claims set them. The error says why the claims are no JSON
    /// object.
    pub fn mint(&self, values: &Values<'_>) -> Result<String, String> {
        let text = self.claims.render(values);
        let mut claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|err| format!("the claims are not a JSON object ({err}): {text}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        claims.entry("iat").or_insert(now.into());
        claims
            .entry("exp")
            .or_insert((now + self.expires_in.as_secs().max(1)).into());
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TokenSpec {
        serde_norway::from_str(yaml).expect("parses")
    }

    fn values(custom: &[String]) -> Values<'_> {
        Values {
            user_id: "u7",
            user: 7,
            room: "room-0",
            target: "",
            custom,
            last_seen: "",
            seq: 0,
            ts: 0,
            payload_size: 0,
        }
    }

    #[test]
    fn an_hs256_token_carries_its_claims_and_expiry() {
        let token = Token::compile(
            "jwt",
            &spec("{alg: HS256, secret: s3cret, claims: '{\"sub\":\"{{user_id}}\"}', expires_in: 30s}"),
            0,
            &Names::default(),
            Path::new("."),
        )
        .expect("compiles");
        let jwt = token.mint(&values(&[])).expect("mints");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let read = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("valid");
        assert_eq!(read.claims["sub"], "u7");
        let (iat, exp) = (read.claims["iat"].as_u64(), read.claims["exp"].as_u64());
        assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(30));
        let wrong = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_secret(b"other"),
            &validation,
        );
        assert!(wrong.is_err(), "signed with the secret");
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        let err = |yaml: &str| {
            Token::compile("jwt", &spec(yaml), 0, &Names::default(), Path::new("."))
                .expect_err("refused")
        };
        assert!(err("{alg: HS256, claims: '{}', expires_in: 1s}").contains("secret"));
        assert!(err("{alg: RS256, secret: x, claims: '{}', expires_in: 1s}").contains("key_file"));
        assert!(
            err("{alg: RS256, key_file: /nonexistent.pem, claims: '{}', expires_in: 1s}")
                .contains("/nonexistent.pem")
        );
        assert!(
            err("{alg: HS256, secret: x, claims: '{}', expires_in: 0s}").contains("expires_in")
        );
        assert!(
            err("{alg: HS256, secret: x, claims: '{{nope}}', expires_in: 1s}").contains("claims")
        );
        let token = Token::compile(
            "jwt",
            &spec("{alg: HS256, secret: x, claims: 'not json', expires_in: 1s}"),
            0,
            &Names::default(),
            Path::new("."),
        )
        .expect("compiles");
        assert!(
            token
                .mint(&values(&[]))
                .expect_err("no object")
                .contains("JSON object")
        );
    }
}
