//! ThingsBoard's session limits: the documented defaults until the server
//! answers `getSessionLimits`, then its answer: payload size, in-flight
//! count, and the `messages`, `telemetryMessages` and
//! `telemetryDataPoints` windows. In gateway mode `gatewayRateLimits` are
//! the gateway session's and `rateLimits` each child device's (a
//! `v1/gateway/telemetry` message counts once for the gateway and once for
//! every child in it); in device mode `rateLimits` are the session's.

use serde_json::Value;

use super::Thingsboard;
use crate::config::{TbMode, ThingsboardSinkConfig};
use crate::sink::session::{BudgetSpec, Limits};
use crate::sink::{Action, Publish};
use crate::units::RateSpec;

/// ThingsBoard's documented default limits (`messages`, `telemetryMessages`),
/// obeyed until the server answers `getSessionLimits`.
const DEFAULT_RATE: &str = "200:1,6000:60,14000:3600";
const DEFAULT_TELEMETRY_RATE: &str = "100:1,3000:60,7000:3600";
const DEFAULT_POINTS: &str = "200:1";

/// The limits to start with: the configured message rate (then the
/// server's answer is not used for rates), else the documented defaults.
pub fn initial_rate(cfg: &ThingsboardSinkConfig) -> BudgetSpec {
    match &cfg.rate_limits {
        Some(text) => BudgetSpec::messages(&RateSpec::parse(text).unwrap_or_default()),
        None => BudgetSpec {
            session: Limits {
                messages: RateSpec::parse(DEFAULT_RATE).unwrap_or_default(),
                telemetry_messages: RateSpec::parse(DEFAULT_TELEMETRY_RATE).unwrap_or_default(),
                telemetry_points: RateSpec::parse(DEFAULT_POINTS).unwrap_or_default(),
            },
            child: None,
        },
    }
}

/// One `rateLimits` object: its three kinds of windows.
fn limits_of(v: &Value) -> Limits {
    let parse = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|t| RateSpec::parse(t).ok())
            .unwrap_or_default()
    };
    Limits {
        messages: parse("messages"),
        telemetry_messages: parse("telemetryMessages"),
        telemetry_points: parse("telemetryDataPoints"),
    }
}

/// The budget a `getSessionLimits` answer sets for this mode.
pub(super) fn budget_of(v: &Value, gateway: bool) -> BudgetSpec {
    let device = v.get("rateLimits").map(limits_of).unwrap_or_default();
    match v.get("gatewayRateLimits").filter(|g| g.is_object()) {
        Some(g) if gateway => BudgetSpec {
            session: limits_of(g),
            child: Some(device),
        },
        _ => BudgetSpec {
            session: device,
            child: None,
        },
    }
}

/// The fewest data points one message may carry under `spec` (the session's
/// and, for a child, its own shortest window).
pub(super) fn max_points(spec: &BudgetSpec) -> Option<u64> {
    let child = spec.child.as_ref().and_then(Limits::max_points);
    match (spec.session.max_points(), child) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
        let rate = (!self.fixed_rate).then(|| budget_of(v, gateway));
        if let Some(spec) = &rate {
            self.set_budget(spec);
        }
        tracing::info!(
            sink = %self.sink,
            max_payload = self.limit.get(),
            max_inflight = ?max_inflight,
            max_points_per_message = ?max_points(rate.as_ref().unwrap_or(&self.budget)),
            "ThingsBoard session limits received"
        );
        Action::Limits { max_inflight, rate }
    }

    /// Encodes within `spec` from now on: no message with more data points
    /// than a window holds, no reading admitted that could not go alone.
    pub(super) fn set_budget(&mut self, spec: &BudgetSpec) {
        self.budget = spec.clone();
        self.limit.set_max_points(max_points(spec));
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
