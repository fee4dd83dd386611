//! Reading TOML sections into typed structs without stopping at the first
//! error, so `check-config` can name every bad key at once.

use serde::de::DeserializeOwned;

use super::problem::{Problem, Problems};
use super::secret;

pub(super) fn section<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let v = table.get(key)?;
    value(v, key, problems)
}

/// Deserializes one section. serde stops at the first error, so after each
/// error the offending key is taken out and the rest is tried again: every
/// bad key of a section is reported, not only the first.
pub(super) fn value<T: DeserializeOwned>(
    v: &toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut v = v.clone();
    for _ in 0..64 {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let mut message = clean_message(&e.into_inner().to_string());
        if secret::is_secret(&full) {
            // serde quotes the offending value; a secret is never shown.
            message = "not a valid value (the value is a secret and is not shown)".into();
        }
        // A key taken out after its own error is then "missing": said already.
        let repeat = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .is_some_and(|k| problems.iter().any(|p| p.path == format!("{full}.{k}")));
        if !repeat {
            problems.add(full, message);
        }
        let first = inner
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_string();
        let removed = match v.as_table_mut() {
            Some(t) if !first.is_empty() => t.remove(&first).is_some(),
            _ => false,
        };
        if !removed {
            return None;
        }
    }
    None
}

/// toml's messages end with a location line that the key path already gives.
fn clean_message(m: &str) -> String {
    m.lines().next().unwrap_or_default().trim().to_string()
}

/// An array of tables (`[[route]]`), each read on its own.
pub(super) fn array<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    written: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(usize, T)> {
    let mut out = Vec::new();
    match table.get(key) {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = value::<T>(item, &format!("{key}[{i}]"), problems) {
                    out.push((i, r));
                }
            }
        }
        Some(_) => problems.add(
            key,
            format!("must be an array of tables, written as {written}"),
        ),
    }
    out
}
