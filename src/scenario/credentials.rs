//! Credentials files: one row per user, as CSV with a header or a JSON array of objects; the
//! columns become template variables.

use std::collections::BTreeMap;
use std::path::Path;

/// Rows of a credentials file.
#[derive(Debug, Clone, Default)]
pub(super) struct Credentials {
    pub(super) columns: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

pub(super) fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let text = crate::files::read_text(path, crate::files::MAX_CREDENTIALS_BYTES)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    let credentials = if path.extension().is_some_and(|e| e == "json") {
        credentials_from_json(&text)
    } else {
        credentials_from_csv(&text)
    }
    .map_err(|err| format!("`{}`: {err}", path.display()))?;
    if credentials.rows.is_empty() {
        return Err(format!("`{}` has no rows", path.display()));
    }
    Ok(credentials)
}

fn credentials_from_csv(text: &str) -> Result<Credentials, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|err| err.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_string).collect())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(Credentials { columns, rows })
}

fn credentials_from_json(text: &str) -> Result<Credentials, String> {
    let objects: Vec<BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|err| format!("expected an array of objects: {err}"))?;
    let columns: Vec<String> = objects
        .first()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let rows = objects
        .iter()
        .enumerate()
        .map(|(i, object)| {
            columns
                .iter()
                .map(|c| match object.get(c) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Ok(v.to_string())
                    }
                    _ => Err(format!("row {i}: `{c}` missing or not a string/number")),
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok(Credentials { columns, rows })
}
