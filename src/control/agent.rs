//! outpost's own RPC methods, whatever platform carries them: `ping`,
//! `status` (queues, counters, version) and `set_log_level`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::status::StatusSource;
use crate::sink::Agent;

/// Changes the running log filter (the daemon owns logging).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The agent that answers RPC to outpost itself.
pub struct OwnRpc {
    pub status: StatusSource,
    pub set_log_level: SetLogLevel,
}

impl Agent for OwnRpc {
    fn call(&self, method: &str, params: &Value) -> Value {
        match method {
            "ping" | "gateway_ping" => json!({"pong": true}),
            "status" | "gateway_stats" => self.status.snapshot(),
            "set_log_level" => {
                let level = params
                    .get("level")
                    .and_then(Value::as_str)
                    .or_else(|| params.as_str())
                    .unwrap_or_default();
                match (self.set_log_level)(level) {
                    Ok(()) => json!({"ok": true, "level": level}),
                    Err(e) => json!({"error": e}),
                }
            }
            other => json!({
                "error": format!("unknown method `{other}`; outpost answers ping, status and set_log_level")
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::OWN_METHODS;

    /// What a device session keeps for outpost is exactly what it answers.
    #[test]
    fn every_own_method_is_answered() {
        let stats = Arc::new(crate::stats::Stats::new(&[]));
        let dir = tempfile::tempdir().expect("dir");
        let cfg = crate::config::StoreConfig::default();
        let (outbox, _writer) =
            crate::store::Outbox::open(dir.path().join("o.db"), &cfg, &[]).expect("outbox");
        let agent = OwnRpc {
            status: StatusSource {
                stats,
                outbox,
                broker: None,
                first_start: None,
                state_dir: None,
                http: Default::default(),
            },
            set_log_level: Arc::new(|_| Ok(())),
        };
        for m in OWN_METHODS {
            let v = agent.call(m, &json!({"level": "info"}));
            assert!(v.get("error").is_none(), "{m}: {v}");
        }
        assert!(agent.call("setLed", &Value::Null).get("error").is_some());
    }
}
