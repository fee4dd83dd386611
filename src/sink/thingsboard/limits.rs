//! ThingsBoard's session limits: the documented defaults until the server
//! answers `getSessionLimits`, then its answer (payload size, in-flight
//! count, message-rate windows; `gatewayRateLimits` in gateway mode).

use serde_json::Value;

use super::Thingsboard;
use crate::config::{TbMode, ThingsboardSinkConfig};
use crate::sink::{Action, Publish};
use crate::units::RateSpec;

/// ThingsBoard's documented default limits (`messages`, `telemetryMessages`),
/// obeyed until the server answers `getSessionLimits`.
const DEFAULT_RATE: &str = "200:1,6000:60,14000:3600";
const DEFAULT_TELEMETRY_RATE: &str = "100:1,3000:60,7000:3600";

/// The limits to start with: the configured ones, else the documented
/// defaults.
pub fn initial_rate(cfg: &ThingsboardSinkConfig) -> RateSpec {
    match &cfg.rate_limits {
        Some(text) => RateSpec::parse(text).unwrap_or_default(),
        None => RateSpec::parse(DEFAULT_RATE)
            .unwrap_or_default()
            .and(RateSpec::parse(DEFAULT_TELEMETRY_RATE).unwrap_or_default()),
    }
}

/// The next id of one of outpost's own requests, after `last`: far from the
/// small ids ThingsBoard gives server-side RPC (1e9 and up, cycling).
pub(super) fn next_request_id(last: u64) -> u64 {
    last.wrapping_add(1)
        .wrapping_rem(1_000_000)
        .wrapping_add(1_000_000_000)
}

impl Thingsboard {
    /// This session's `getSessionLimits` request, with an id far from the
    /// small ids ThingsBoard gives server-side RPC.
    pub(super) fn ask_limits(&mut self) -> Publish {
        self.limits_request = next_request_id(self.limits_request);
        Publish {
            topic: format!("v1/devices/me/rpc/request/{}", self.limits_request),
            payload: br#"{"method":"getSessionLimits","params":{}}"#.to_vec(),
            ids: Vec::new(),
        }
    }

    /// Reads a `getSessionLimits` answer.
    pub(super) fn session_limits(&mut self, v: &Value) -> Action {
        let gateway = self.mode == TbMode::Gateway;
        if let Some(max) = v["maxPayloadSize"].as_u64() {
            self.limit.learn(max);
        }
        let max_inflight = v["maxInflightMessages"]
            .as_u64()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let rate = if self.fixed_rate {
            None
        } else {
            let limits = if gateway && v["gatewayRateLimits"].is_object() {
                &v["gatewayRateLimits"]
            } else {
                &v["rateLimits"]
            };
            let parse = |k: &str| {
                limits[k]
                    .as_str()
                    .and_then(|t| RateSpec::parse(t).ok())
                    .unwrap_or_default()
            };
            Some(parse("messages").and(parse("telemetryMessages")))
        };
        tracing::info!(
            sink = %self.sink,
            max_payload = self.limit.get(),
            max_inflight = ?max_inflight,
            "ThingsBoard session limits received"
        );
        Action::Limits { max_inflight, rate }
    }

    /// The answer to this session's `getSessionLimits`, if it is one.
    pub(super) fn limits_answer(&mut self, id: &str, payload: &[u8]) -> Option<Vec<Action>> {
        if id != self.limits_request.to_string() {
            return None;
        }
        Some(match serde_json::from_slice::<Value>(payload) {
            Ok(v) if v.get("maxPayloadSize").is_some() || v.get("rateLimits").is_some() => {
                vec![self.session_limits(&v)]
            }
            _ => {
                tracing::warn!(sink = %self.sink, "unreadable getSessionLimits answer; keeping the current limits");
                Vec::new()
            }
        })
    }
}
