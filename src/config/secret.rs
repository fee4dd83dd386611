//! Which config keys hold secrets, declared once. Everything that prints
//! configuration (check-config, the overlay listing, status, logs, problem
//! messages) redacts through here, so a new secret key is hidden
//! everywhere by adding it to [`SECRET_KEYS`].

use serde_json::Value;

/// Keys whose values are never printed.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "access_token",
    "provision_device_key",
    "provision_device_secret",
    "api_key",
    "thing_token",
    "activation_code",
    "device_tokens",
    "child_tokens",
];

/// What a secret shows as.
pub const HIDDEN: &str = "(secret)";

/// Is the last key of a path (`sink.up.password`, `password`) a secret?
pub fn is_secret(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    SECRET_KEYS.contains(&last)
}

/// A JSON value with every secret replaced, for printing.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    Value::String(HIDDEN.into())
                } else {
                    redact(v)
                };
                (k.clone(), v)
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Value::Array(a) => a.iter().map(redact).collect::<Vec<_>>().into(),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_secret_key_is_hidden_at_any_depth() {
        let v = json!({
            "up": {"password": "p", "url": "mqtt://x"},
            "ttn": {"api_key": "NNSXS.k"},
            "tio": [{"thing_token": "t", "activation_code": "c"}],
            "tb": {"access_token": "a", "provision_device_key": "k", "provision_device_secret": "s"},
        });
        let shown = redact(&v).to_string();
        for secret in [
            "\"p\"", "NNSXS", "\"t\"", "\"c\"", "\"a\"", "\"k\"", "\"s\"",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("mqtt://x"));
        assert!(is_secret("sink.up.password"));
        assert!(!is_secret("sink.up.url"));
    }
}
