//! The remote overlay: configuration set from ThingsBoard shared attributes,
//! kept in the state directory so that it holds after a reboot while
//! offline.
//!
//! The local file stays the base; the overlay wins. One shared attribute per
//! section, so that one setting can change without resending the rest:
//!
//! | attribute | config | merge |
//! | --- | --- | --- |
//! | `routes` | `[[route]]` | replaces the list |
//! | `serial` | `[[serial]]` | replaces the list |
//! | `store` | `[store]` | key by key |
//! | `sinks` | `[sink.NAME]` | key by key within each sink |
//! | `health` | `[health]` | key by key |
//! | `readings` | `[readings]` | key by key |
//! | `log_level` | `log_level` | replaces |
//!
//! plus `config_version`, echoed back in the report. A section's value is
//! JSON (an object or list, or the same as a JSON string); `null` removes
//! the section from the overlay, so the file's value applies again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Shared attribute name → config key.
pub const SECTIONS: &[(&str, &str)] = &[
    ("routes", "route"),
    ("serial", "serial"),
    ("store", "store"),
    ("sinks", "sink"),
    ("health", "health"),
    ("readings", "readings"),
    ("log_level", "log_level"),
];

/// The shared attributes outpost takes (and does not pass on to devices).
pub fn attribute_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = SECTIONS.iter().map(|(a, _)| *a).collect();
    names.push("config_version");
    names
}

/// What the remote side set, by config key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overlay {
    /// `config_version` of the last change (any JSON scalar).
    #[serde(default)]
    pub version: Option<Value>,
    #[serde(default)]
    pub sections: BTreeMap<String, Value>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("remote-config.json")
}

impl Overlay {
    /// The stored overlay (empty when there is none).
    pub fn load(state_dir: &Path) -> Result<Overlay, String> {
        let p = path(state_dir);
        match std::fs::read_to_string(&p) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{} is damaged ({e}); remove it to drop the remote overlay",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overlay::default()),
            Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        }
    }

    /// Stores the overlay (0600: it may hold credentials), atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), String> {
        let p = path(state_dir);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::files::write_private(&p, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// This overlay with the changed shared attributes applied. Attributes
    /// that are not outpost's are ignored.
    pub fn with_changes(&self, shared: &Map<String, Value>) -> Result<Overlay, String> {
        let mut next = self.clone();
        if let Some(v) = shared.get("config_version") {
            next.version = Some(v.clone());
        }
        for (attr, key) in SECTIONS {
            let Some(v) = shared.get(*attr) else { continue };
            let v = match v {
                // ThingsBoard may hold JSON as a string attribute.
                Value::String(s) if *key != "log_level" => {
                    serde_json::from_str(s).map_err(|e| format!("{attr}: not JSON: {e}"))?
                }
                other => other.clone(),
            };
            if v.is_null() {
                next.sections.remove(*key);
            } else {
                next.sections.insert(key.to_string(), v);
            }
        }
        // A shared attribute deleted in ThingsBoard (`{"deleted":[..]}`,
        // `JsonConverter.getJsonObjectForGateway`/device updates): that part
        // goes back to the file's value.
        if let Some(Value::Array(deleted)) = shared.get("deleted") {
            for name in deleted.iter().filter_map(Value::as_str) {
                if let Some((_, key)) = SECTIONS.iter().find(|(attr, _)| *attr == name) {
                    next.sections.remove(*key);
                }
            }
        }
        Ok(next)
    }

    /// The base table with this overlay merged in.
    pub fn merge(&self, base: &toml::Table) -> Result<toml::Table, String> {
        let mut out = base.clone();
        for (key, v) in &self.sections {
            let attr = SECTIONS
                .iter()
                .find(|(_, k)| k == key)
                .map(|(a, _)| *a)
                .unwrap_or(key);
            let value = to_toml(v).map_err(|e| format!("{attr}: {e}"))?;
            match (key.as_str(), out.get_mut(key), value) {
                (
                    "store" | "health" | "readings",
                    Some(toml::Value::Table(t)),
                    toml::Value::Table(o),
                ) => {
                    t.extend(o);
                }
                ("sink", Some(toml::Value::Table(sinks)), toml::Value::Table(o)) => {
                    for (name, s) in o {
                        match (sinks.get_mut(&name), s) {
                            (Some(toml::Value::Table(t)), toml::Value::Table(s)) => t.extend(s),
                            (_, s) => {
                                sinks.insert(name, s);
                            }
                        }
                    }
                }
                (_, _, value) => {
                    out.insert(key.clone(), value);
                }
            }
        }
        Ok(out)
    }

    /// Key paths whose value comes from the overlay, for `check-config`.
    pub fn sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, v) in &self.sections {
            match (key.as_str(), v) {
                ("store" | "health" | "readings", Value::Object(m)) => {
                    out.extend(m.keys().map(|k| format!("{key}.{k}")))
                }
                ("sink", Value::Object(m)) => {
                    for (name, s) in m {
                        match s {
                            Value::Object(s) => {
                                out.extend(s.keys().map(|k| format!("sink.{name}.{k}")))
                            }
                            _ => out.push(format!("sink.{name}")),
                        }
                    }
                }
                _ => out.push(key.clone()),
            }
        }
        out
    }
}

/// JSON → TOML (null has no TOML form).
fn to_toml(v: &Value) -> Result<toml::Value, String> {
    Ok(match v {
        Value::Null => {
            return Err("null is not a value here (use null only for a whole section)".into())
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().map(to_toml).collect::<Result<_, _>>()?),
        Value::Object(m) => toml::Value::Table(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), to_toml(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// A short, stable fingerprint of a JSON value (SHA-256, 16 hex digits).
pub fn hash(v: &Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, v.to_string().as_bytes());
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = r#"
[store]
max_bytes = "64 MiB"
full_policy = "drop_oldest"

[[route]]
topic = "sensors/+/telemetry"
sink = "up"

[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
"#;

    fn base() -> toml::Table {
        toml::from_str(BASE).expect("base")
    }

    #[test]
    fn sections_merge_lists_replace_and_null_removes() {
        let shared = json!({
            "config_version": 7,
            "routes": [{"topic": "a/+/t", "sink": "up"}, {"topic": "b/+/t", "sink": "up"}],
            "store": {"full_policy": "reject_new"},
            "sinks": "{\"up\": {\"inflight\": 5}}",
            "log_level": "debug",
            "unrelated": 1,
        });
        let o = Overlay::default()
            .with_changes(shared.as_object().expect("object"))
            .expect("overlay");
        assert_eq!(o.version, Some(json!(7)));
        let merged = o.merge(&base()).expect("merge");
        let c = crate::config::parse_table(&merged, "test").expect("valid");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.store.full_policy, crate::config::FullPolicy::RejectNew);
        assert_eq!(
            c.store.max_bytes.0,
            64 << 20,
            "untouched keys stay the file's"
        );
        assert_eq!(c.log_level, "debug");
        let crate::config::SinkConfig::Mqtt(up) = &c.sinks["up"] else {
            panic!("mqtt sink")
        };
        assert_eq!(up.inflight, 5);
        assert_eq!(up.url, "mqtt://127.0.0.1:1883");
        let mut sources = o.sources();
        sources.sort();
        assert_eq!(
            sources,
            [
                "log_level",
                "route",
                "sink.up.inflight",
                "store.full_policy"
            ]
        );

        let back = o
            .with_changes(json!({"routes": null}).as_object().expect("object"))
            .expect("remove");
        let c =
            crate::config::parse_table(&back.merge(&base()).expect("merge"), "t").expect("valid");
        assert_eq!(c.routes.len(), 1, "the file's routes again");
    }

    #[test]
    fn a_bad_section_is_named_with_the_same_key_paths_as_the_file() {
        let o = Overlay::default()
            .with_changes(
                json!({"store": {"full_policy": "sometimes"}})
                    .as_object()
                    .expect("o"),
            )
            .expect("overlay");
        let err = crate::config::parse_table(&o.merge(&base()).expect("merge"), "remote")
            .expect_err("invalid");
        assert!(err.to_string().contains("store.full_policy"), "{err}");
        let bad = Overlay::default().with_changes(json!({"routes": "[{"}).as_object().expect("o"));
        assert!(bad.expect_err("not json").starts_with("routes: not JSON"));
    }

    #[test]
    fn saved_and_loaded_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Overlay::load(dir.path()), Ok(Overlay::default()));
        let o = Overlay {
            version: Some(json!("v3")),
            sections: BTreeMap::from([("log_level".to_string(), json!("warn"))]),
        };
        o.save(dir.path()).expect("save");
        assert_eq!(Overlay::load(dir.path()), Ok(o));
        let mode = std::fs::metadata(path(dir.path()))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat");
        assert_eq!(mode, 0o600);
    }
}
