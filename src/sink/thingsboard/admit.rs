//! What ThingsBoard takes, checked at ingest: string keys that are not
//! empty, at least one value that is not null, a child device name it can store, and
//! a message no larger than the server's payload limit as last known, and
//! no more data points than its shortest `telemetryDataPoints` window.
//!
//! The limit is the smaller of `max_payload_size` and the server's
//! `maxPayloadSize`. The server's answer is kept in the state directory
//! (`limits/<sink>.json`), so after a restart readings are checked against
//! what the server said in the last session, before it says it again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::encode::{self, key_values};
use super::values;
use crate::config::TbMode;
use crate::record::{Record, RecordKind};
use crate::route::{Admit, Refusal};

/// ThingsBoard keeps device names of at most this many characters.
pub const MAX_DEVICE_NAME: usize = 255;

/// The payload limit shared by the sink (which learns it) and ingest
/// (which checks against it), and the file that keeps the server's answer.
#[derive(Debug, Clone)]
pub struct PayloadLimit {
    current: Arc<AtomicUsize>,
    configured: usize,
    file: Option<PathBuf>,
    /// The most data points one telemetry message may carry (the smallest
    /// `telemetryDataPoints` window; `u64::MAX`: no limit known).
    points: Arc<AtomicU64>,
}

impl PayloadLimit {
    /// The configured limit, lowered by what the server said in an earlier
    /// session if `file` holds it.
    pub fn new(configured: usize, file: Option<PathBuf>) -> PayloadLimit {
        let known = file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("max_payload").and_then(Value::as_u64))
            .and_then(|n| usize::try_from(n).ok());
        let start = known.map_or(configured, |n| n.clamp(1, configured));
        PayloadLimit {
            current: Arc::new(AtomicUsize::new(start)),
            configured,
            file,
            points: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    pub fn max_points(&self) -> u64 {
        self.points.load(Ordering::Relaxed)
    }

    /// The smallest data-point window now in force (`None`: no limit).
    pub fn set_max_points(&self, n: Option<u64>) {
        self.points
            .store(n.unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    pub fn configured(&self) -> usize {
        self.configured
    }

    pub fn get(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The server's `maxPayloadSize`: used from now on (never above the
    /// configured limit) and kept for the next start.
    pub fn learn(&self, server: u64) -> usize {
        let n = usize::try_from(server)
            .unwrap_or(usize::MAX)
            .clamp(1, self.configured);
        self.current.store(n, Ordering::Relaxed);
        if let Some(file) = &self.file {
            let body = serde_json::json!({ "max_payload": server });
            if let Err(e) = crate::files::write_private(file, body.to_string().as_bytes()) {
                tracing::warn!(file = %file.display(), error = %e, "cannot keep the server's payload limit for the next start");
            }
        }
        n
    }
}

/// The check itself; cheap to clone, shared with ingest.
#[derive(Debug, Clone)]
pub struct TbAdmit {
    pub(super) gateway: bool,
    pub(super) limit: PayloadLimit,
}

impl TbAdmit {
    pub fn new(mode: TbMode, limit: PayloadLimit) -> TbAdmit {
        TbAdmit {
            gateway: mode == TbMode::Gateway,
            limit,
        }
    }

    /// The bytes this record alone makes as a ThingsBoard message.
    fn encoded_size(&self, r: &Record) -> usize {
        let one = std::slice::from_ref(r);
        let publishes = match r.kind {
            RecordKind::Telemetry => encode::telemetry(one, "t", self.gateway, usize::MAX).0,
            RecordKind::Attributes => encode::attributes(one, "a", self.gateway, usize::MAX),
            // A claim, an RPC or an attribute request carries its values
            // as one object.
            RecordKind::Claim | RecordKind::Rpc | RecordKind::AttributesRequest => {
                let body = Value::Object(key_values(&r.payload)).to_string();
                let device = if self.gateway {
                    r.device.len().saturating_add(6)
                } else {
                    0
                };
                return body.len().saturating_add(device);
            }
        };
        publishes.iter().map(|p| p.payload.len()).sum()
    }
}

impl Admit for TbAdmit {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        for k in key_values(&r.payload).keys() {
            if k.is_empty() {
                return Err(Refusal::format(
                    "an empty key (ThingsBoard needs a non-empty string key)",
                ));
            }
        }
        let data = matches!(r.kind, RecordKind::Telemetry | RecordKind::Attributes);
        if data && values::all_null(&r.payload) {
            return Err(Refusal::format(
                "every value is null: ThingsBoard skips null values, so it would store nothing of this reading",
            ));
        }
        if self.gateway && r.device.chars().count() > MAX_DEVICE_NAME {
            return Err(Refusal::topic(format!(
                "a device name of {} characters: ThingsBoard keeps at most {MAX_DEVICE_NAME}",
                r.device.chars().count()
            )));
        }
        let points = self.limit.max_points();
        if r.kind == RecordKind::Telemetry {
            let n = values::data_points(&r.payload).len() as u64;
            if n > points {
                return Err(Refusal::too_large(format!(
                    "{n} data points in one reading: ThingsBoard's telemetryDataPoints limit lets at most {points} through in its shortest window"
                )));
            }
        }
        let limit = self.limit.get();
        let size = self.encoded_size(r);
        if size > limit {
            return Err(Refusal::too_large(format!(
                "{size} bytes as a ThingsBoard message: larger than its payload limit of {limit} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(device: &str, payload: &[u8]) -> Record {
        Record {
            id: 1,
            sink: "tb".into(),
            device: device.into(),
            kind: RecordKind::Telemetry,
            ts: 1_795_000_000_000,
            topic: String::new(),
            payload: payload.to_vec(),
            ts_source: Default::default(),
        }
    }

    #[test]
    fn keys_values_names_and_size_are_checked() {
        let a = TbAdmit::new(TbMode::Gateway, PayloadLimit::new(1024, None));
        assert!(a.admit(&rec("d", br#"{"t":1}"#)).is_ok());
        assert_eq!(
            a.admit(&rec("d", br#"{"":1}"#)).map_err(|e| e.code),
            Err(0x99)
        );
        assert_eq!(
            a.admit(&rec("d", br#"{"t":null}"#)).map_err(|e| e.code),
            Err(0x99)
        );
        // ThingsBoard skips a null value and keeps the others.
        assert!(a.admit(&rec("d", br#"{"t":null,"h":40}"#)).is_ok());
        assert_eq!(
            a.admit(&rec(&"n".repeat(256), b"1")).map_err(|e| e.code),
            Err(0x90)
        );
        // 900 quotes become 1800 escaped bytes: over 1 KiB once encoded.
        let quotes = format!("\"{}\"", "\\\"".repeat(900));
        let err = a
            .admit(&rec("d", quotes.as_bytes()))
            .expect_err("too large");
        assert_eq!(err.code, 0x97);
        assert!(err.reason.contains("1024"), "{}", err.reason);
        a.limit.set_max_points(Some(2));
        assert!(a.admit(&rec("d", br#"{"a":1,"b":2}"#)).is_ok());
        let err = a
            .admit(&rec("d", br#"{"a":1,"b":2,"c":3}"#))
            .expect_err("too many points");
        assert_eq!(err.code, 0x97);
        assert!(err.reason.contains("telemetryDataPoints"), "{}", err.reason);
    }

    #[test]
    fn the_server_limit_is_kept_for_the_next_start_and_never_raises_the_configured_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("limits").join("tb.json");
        let limit = PayloadLimit::new(65536, Some(file.clone()));
        assert_eq!(limit.get(), 65536);
        assert_eq!(limit.learn(2048), 2048);
        assert_eq!(PayloadLimit::new(65536, Some(file.clone())).get(), 2048);
        assert_eq!(PayloadLimit::new(1024, Some(file.clone())).get(), 1024);
        assert_eq!(limit.learn(1 << 40), 65536);
    }
}
