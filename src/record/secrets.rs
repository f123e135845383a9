//! Secrets found in a capture — the handshake's `Authorization` and `Cookie`, tokens in the
//! URL's query and in frames' fields — each replaced by a template variable the user fills,
//! so no secret reaches the written scenario or the log.

use std::collections::BTreeMap;

/// Headers the handshake makes itself, or that say nothing about the server: not written.
const HANDSHAKE_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "user-agent",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "content-length",
];

/// Whether a header, query parameter or field of this name carries a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "auth",
        "secret",
        "password",
        "passwd",
        "session",
        "cookie",
        "apikey",
        "api_key",
        "api-key",
        "jwt",
        "signature",
        "credential",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// The secrets taken out so far: each variable, where its value was found, and the values
/// (only to scrub the output of them).
#[derive(Debug, Default)]
pub struct Secrets {
    found: BTreeMap<String, String>,
    values: Vec<(String, String)>,
}

impl Secrets {
    /// Takes `value` (found at `place`) out: the `{{variable}}` to write in its place.
    pub fn take(&mut self, name: &str, value: &str, place: &str) -> String {
        let var = self.variable_for(name, value);
        self.found
            .entry(var.clone())
            .or_insert_with(|| place.to_string());
        if !self.values.iter().any(|(_, v)| v == value) {
            self.values.push((var.clone(), value.to_string()));
        }
        format!("{{{{{var}}}}}")
    }

    /// A variable name from `name` (`access_token`), the same one for the same value.
    fn variable_for(&self, name: &str, value: &str) -> String {
        if let Some((var, _)) = self.values.iter().find(|(_, v)| v == value) {
            return var.clone();
        }
        let mut base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
            base.insert_str(0, "secret_");
        }
        let mut var = base.clone();
        let mut n = 2;
        while self.found.contains_key(&var) {
            var = format!("{base}_{n}");
            n += 1;
        }
        var
    }

    /// The variables, each with where its secret was.
    pub fn found(&self) -> &BTreeMap<String, String> {
        &self.found
    }

    /// `text` with every secret value still in it replaced by its variable (a token that
    /// also appeared where no name said it was one).
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (var, value) in &self.values {
            if value.len() >= 4 {
                text = text.replace(value.as_str(), &format!("{{{{{var}}}}}"));
            }
        }
        text
    }

    /// The handshake headers to write: secrets replaced, what the handshake makes dropped.
    pub fn headers(&mut self, headers: &[(String, String)]) -> Vec<(String, String)> {
        let mut kept = Vec::new();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with(':') || HANDSHAKE_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            let place = format!("the {name} header");
            let value = match lower.as_str() {
                "authorization" => match value.split_once(' ') {
                    Some((scheme, credential)) => {
                        let var = if scheme.eq_ignore_ascii_case("bearer") {
                            "token"
                        } else {
                            "authorization"
                        };
                        format!("{scheme} {}", self.take(var, credential, &place))
                    }
                    None => self.take("authorization", value, &place),
                },
                _ if is_secret_name(&lower) => self.take(&lower, value, &place),
                _ => value.clone(),
            };
            kept.push((name.clone(), value));
        }
        kept
    }

    /// The URL with the values of its secret query parameters replaced (a template then).
    pub fn url(&mut self, url: &url::Url) -> String {
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        let Some(query) = url.query() else {
            return base.to_string();
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if is_secret_name(name) => format!(
                    "{name}={}",
                    self.take(name, value, &format!("the URL's `{name}` parameter"))
                ),
                _ => pair.to_string(),
            })
            .collect();
        format!("{base}?{}", pairs.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_become_variables_and_are_scrubbed_wherever_else_they_appear() {
        let mut secrets = Secrets::default();
        let headers = secrets.headers(&[
            ("Authorization".into(), "Bearer eyJhbGciOi.abc".into()),
            ("Cookie".into(), "sid=42abc".into()),
            ("Sec-WebSocket-Key".into(), "x".into()),
            ("Origin".into(), "http://h".into()),
        ]);
        assert_eq!(
            headers,
            vec![
                ("Authorization".into(), "Bearer {{token}}".into()),
                ("Cookie".into(), "{{cookie}}".into()),
                ("Origin".into(), "http://h".into()),
            ]
        );
        let url = url::Url::parse("ws://h:1/ws?room=a&access_token=s3cr3t#x").expect("as captured");
        assert_eq!(
            secrets.url(&url),
            "ws://h:1/ws?room=a&access_token={{access_token}}"
        );
        assert_eq!(
            secrets.scrub(r#"{"auth":"s3cr3t","jwt":"eyJhbGciOi.abc"}"#),
            r#"{"auth":"{{access_token}}","jwt":"{{token}}"}"#
        );
        assert_eq!(secrets.found().len(), 3);
        assert_eq!(secrets.take("token", "other", "a frame"), "{{token_2}}");
    }
}
