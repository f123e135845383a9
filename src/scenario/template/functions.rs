//! What a template expression may do besides naming a variable: generate a value
//! (`uuid()`, `random(1, 100)`, `pick('a', 'b')`, `now_ms()`, `now_s()`) and pass a value
//! through filters (`len`, `pad(8)`, `base64`, `base64url`, `hex`, `sha256`,
//! `hmac_sha256(key)`, `json`, `upper`, `lower`): `{{ body | len }}`,
//! `{{ user_id | hmac_sha256(secret) | hex }}`.
//!
//! Digests give bytes, which a text frame cannot carry as they are: a template whose digest is
//! not followed by `hex`, `base64` or `base64url` is refused when it is compiled.

use std::fmt::Write;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

use super::{Template, Values};

/// The generators and filters, for error messages.
pub const FUNCTIONS: &str = "uuid(), random(min, max), pick(a, b, ...), now_ms(), now_s(); filters len, pad(width), base64, base64url, hex, sha256, hmac_sha256(key), json, upper, lower";

/// Widest `pad`.
const MAX_PAD: usize = 4096;

/// A value made fresh each time it is rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    /// A random UUID (version 4).
    Uuid,
    /// A random integer in `min..=max`.
    Random { min: i64, max: i64 },
    /// One of the given texts, at random.
    Pick(Vec<String>),
    /// The wall-clock time in milliseconds since the Unix epoch.
    NowMs,
    /// The wall-clock time in seconds since the Unix epoch.
    NowS,
}

/// One step of an expression's pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The byte length of the value.
    Len,
    /// Zero-padded on the left to this width.
    Pad(usize),
    Base64,
    Base64Url,
    Hex,
    /// The SHA-256 digest (bytes).
    Sha256,
    /// The HMAC-SHA256 of the value under the key the template renders (bytes).
    HmacSha256(Template),
    /// Escaped for the inside of a JSON string.
    Json,
    Upper,
    Lower,
}

/// A value between filters: text, or the bytes of a digest.
enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

impl Piece {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Piece::Text(text) => text.into_bytes(),
            Piece::Bytes(bytes) => bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Piece::Text(text) => text.as_bytes(),
            Piece::Bytes(bytes) => bytes,
        }
    }
}

impl Generator {
    /// The generator `name(args)`, if `name` is one; the error says what is wrong with its
    /// arguments.
    pub fn parse(name: &str, args: &[Arg]) -> Result<Option<Generator>, String> {
        let none = |generator: Generator| {
            if args.is_empty() {
                Ok(Some(generator))
            } else {
                Err(format!("`{name}()` takes no arguments"))
            }
        };
        match name {
            "uuid" => none(Generator::Uuid),
            "now_ms" => none(Generator::NowMs),
            "now_s" => none(Generator::NowS),
            "random" => {
                let [min, max] = args else {
                    return Err("`random(min, max)` takes two integers".into());
                };
                let (min, max) = (min.integer()?, max.integer()?);
                if min > max {
                    return Err(format!("`random({min}, {max})`: min is above max"));
                }
                Ok(Some(Generator::Random { min, max }))
            }
            "pick" => {
                if args.is_empty() {
                    return Err("`pick(a, b, ...)` needs at least one text".into());
                }
                args.iter()
                    .map(|arg| arg.literal().map(str::to_string))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|texts| Some(Generator::Pick(texts)))
            }
            _ => Ok(None),
        }
    }

    pub fn push(&self, out: &mut String) {
        match self {
            Generator::Uuid => {
                let _ = write!(out, "{}", uuid::Uuid::new_v4());
            }
            Generator::Random { min, max } => {
                let _ = write!(out, "{}", rand::rng().random_range(*min..=*max));
            }
            Generator::Pick(texts) => {
                out.push_str(&texts[rand::rng().random_range(0..texts.len())]);
            }
            Generator::NowMs => {
                let _ = write!(out, "{}", unix_time().as_millis());
            }
            Generator::NowS => {
                let _ = write!(out, "{}", unix_time().as_secs());
            }
        }
    }
}

fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// An argument as written: a quoted text or a number, or a variable's template.
#[derive(Debug, Clone)]
pub enum Arg {
    Literal(String),
    Template(Template),
}

impl Arg {
    fn literal(&self) -> Result<&str, String> {
        match self {
            Arg::Literal(text) => Ok(text),
            Arg::Template(_) => Err("expected a quoted text or a number here".into()),
        }
    }

    fn integer(&self) -> Result<i64, String> {
        let text = self.literal()?;
        text.parse()
            .map_err(|_| format!("expected an integer, got `{text}`"))
    }

    /// As a template: a literal renders as itself.
    fn into_template(self) -> Template {
        match self {
            Arg::Literal(text) => Template::literal(text),
            Arg::Template(template) => template,
        }
    }
}

impl Filter {
    /// The filter `name(args)`; the error names what is unknown or wrong.
    pub fn parse(name: &str, args: Vec<Arg>) -> Result<Filter, String> {
        let plain = |filter: Filter| {
            if args.is_empty() {
                Ok(filter)
            } else {
                Err(format!("the `{name}` filter takes no arguments"))
            }
        };
        match name {
            "len" => plain(Filter::Len),
            "base64" => plain(Filter::Base64),
            "base64url" => plain(Filter::Base64Url),
            "hex" => plain(Filter::Hex),
            "sha256" => plain(Filter::Sha256),
            "json" => plain(Filter::Json),
            "upper" => plain(Filter::Upper),
            "lower" => plain(Filter::Lower),
            "pad" => {
                let [width] = args.as_slice() else {
                    return Err("`pad(width)` takes one number".into());
                };
                let width = width.integer()?;
                usize::try_from(width)
                    .ok()
                    .filter(|&w| w <= MAX_PAD)
                    .map(Filter::Pad)
                    .ok_or_else(|| format!("`pad` width must be 0..={MAX_PAD}, got {width}"))
            }
            "hmac_sha256" => {
                let mut args = args;
                match (args.pop(), args.is_empty()) {
                    (Some(key), true) => Ok(Filter::HmacSha256(key.into_template())),
                    _ => {
                        Err("`hmac_sha256(key)` takes one key: a variable or a quoted text".into())
                    }
                }
            }
            other => Err(format!("unknown filter `{other}`; known: {FUNCTIONS}")),
        }
    }

    fn gives_bytes(&self) -> bool {
        matches!(self, Filter::Sha256 | Filter::HmacSha256(_))
    }

    fn encodes(&self) -> bool {
        matches!(self, Filter::Base64 | Filter::Base64Url | Filter::Hex)
    }

    fn apply(&self, piece: Piece, values: &Values<'_>) -> Piece {
        match self {
            Filter::Len => Piece::Text(piece.as_bytes().len().to_string()),
            Filter::Pad(width) => {
                let text = text_of(piece);
                Piece::Text(format!("{text:0>width$}"))
            }
            Filter::Base64 => {
                Piece::Text(base64::engine::general_purpose::STANDARD.encode(piece.as_bytes()))
            }
            Filter::Base64Url => Piece::Text(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(piece.as_bytes()),
            ),
            Filter::Hex => Piece::Text(hex::encode(piece.as_bytes())),
            Filter::Sha256 => Piece::Bytes(Sha256::digest(piece.as_bytes()).to_vec()),
            Filter::HmacSha256(key) => {
                let key = key.render(values);
                // HMAC takes a key of any length.
                let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
                    .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
                mac.update(piece.as_bytes());
                Piece::Bytes(mac.finalize().into_bytes().to_vec())
            }
            Filter::Json => {
                let text = text_of(piece);
                let quoted = serde_json::Value::String(text).to_string();
                Piece::Text(quoted[1..quoted.len() - 1].to_string())
            }
            Filter::Upper => Piece::Text(text_of(piece).to_uppercase()),
            Filter::Lower => Piece::Text(text_of(piece).to_lowercase()),
        }
    }
}

fn text_of(piece: Piece) -> String {
    match piece {
        Piece::Text(text) => text,
        Piece::Bytes(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Checks that every digest in `filters` is encoded before the text goes out.
pub fn check_pipeline(filters: &[Filter]) -> Result<(), String> {
    let mut raw = false;
    for filter in filters {
        if raw && !filter.encodes() && !filter.gives_bytes() && *filter != Filter::Len {
            return Err(
                "a digest gives bytes: follow sha256 / hmac_sha256 with hex, base64 or base64url"
                    .into(),
            );
        }
        raw = if filter.gives_bytes() {
            true
        } else {
            raw && !filter.encodes() && *filter != Filter::Len
        };
    }
    if raw {
        return Err(
            "a digest gives bytes: follow sha256 / hmac_sha256 with hex, base64 or base64url"
                .into(),
        );
    }
    Ok(())
}

/// Passes `text` through `filters` and appends the result to `out`.
pub fn push_filtered(out: &mut String, text: String, filters: &[Filter], values: &Values<'_>) {
    let piece = filters.iter().fold(Piece::Text(text), |piece, filter| {
        filter.apply(piece, values)
    });
    match piece {
        Piece::Text(text) => out.push_str(&text),
        // Refused at compile time ([`check_pipeline`]); shown as hex rather than broken text.
        bytes => out.push_str(&hex::encode(bytes.into_bytes())),
    }
}
