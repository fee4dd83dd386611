//! What ThingsBoard and outpost tell each other about outpost itself:
//! outpost's own shared attributes (its remote configuration) are split
//! out of the shared-attribute stream and handed on; outpost's reports
//! (client attributes, health telemetry, its client certificate) go on
//! outpost's own device.

use serde_json::{Map, Value};

use super::Thingsboard;
use crate::config::overlay;
use crate::sink::{Action, ControlEvent, Publish, Report};

impl Thingsboard {
    /// Splits outpost's own keys out of a shared-attributes object.
    pub(super) fn take_remote(&self, values: &mut Map<String, Value>) -> Option<Action> {
        if !self.remote {
            return None;
        }
        let mut ours = Map::new();
        for name in overlay::attribute_names() {
            if let Some(v) = values.remove(name) {
                ours.insert(name.to_string(), v);
            }
        }
        // Deleted shared attributes (`{"deleted":[..]}`): ours go to the
        // remote configuration, the others stay for the local device.
        if let Some(Value::Array(deleted)) = values.remove("deleted") {
            let names = overlay::attribute_names();
            let (mine, theirs): (Vec<Value>, Vec<Value>) = deleted
                .into_iter()
                .partition(|d| d.as_str().is_some_and(|d| names.contains(&d)));
            if !mine.is_empty() {
                ours.insert("deleted".into(), Value::Array(mine));
            }
            if !theirs.is_empty() {
                values.insert("deleted".into(), Value::Array(theirs));
            }
        }
        (!ours.is_empty()).then_some(Action::Control(ControlEvent::Shared(ours)))
    }

    /// This session's request for outpost's own shared attributes.
    pub(super) fn ask_remote(&mut self) -> Publish {
        self.attr_request = super::limits::next_request_id(self.attr_request);
        Publish::control(
            format!("v1/devices/me/attributes/request/{}", self.attr_request),
            &serde_json::json!({"sharedKeys": overlay::attribute_names().join(",")}),
        )
    }

    /// The answer to [`Thingsboard::ask_remote`].
    pub(super) fn remote_answer(&self, id: &str, payload: &[u8]) -> Vec<Action> {
        if id != self.attr_request.to_string() {
            return Vec::new();
        }
        let shared = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|mut v| v.get_mut("shared").map(Value::take));
        match shared {
            Some(Value::Object(mut shared)) => self.take_remote(&mut shared).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The client certificate presented (mTLS), as client attributes.
    pub(super) fn identity_report(&self) -> Option<Publish> {
        let id = self.identity.as_ref()?;
        // Days are counted from now, not from startup.
        let days_left = time::OffsetDateTime::parse(
            &id.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| {
            t.unix_timestamp()
                .saturating_sub(time::OffsetDateTime::now_utc().unix_timestamp())
                / 86_400
        })
        .unwrap_or(id.days_left);
        let attrs = serde_json::json!({
            "certificateCN": id.cn,
            "certificateIssuer": id.issuer_cn,
            "certificateNotAfter": id.not_after,
            "certificateDaysLeft": days_left,
        });
        Some(Publish::control(self.own_attributes_topic(), &attrs))
    }

    /// A report on outpost's own device.
    /// A report as publishes: telemetry is cut into messages of at most
    /// the data points the shortest window allows (same ts: ThingsBoard
    /// merges them).
    pub(super) fn own_report(&self, report: Report) -> Vec<Publish> {
        match report {
            Report::Attributes(a) => vec![Publish::control(
                self.own_attributes_topic(),
                &Value::Object(a),
            )],
            Report::Telemetry { ts, values } => {
                let most = self
                    .budget
                    .session
                    .max_points()
                    .and_then(|n| usize::try_from(n).ok())
                    .unwrap_or(usize::MAX)
                    .max(1);
                let mut out = Vec::new();
                let mut part = serde_json::Map::new();
                for (k, v) in values {
                    part.insert(k, v);
                    if part.len() >= most {
                        out.push(std::mem::take(&mut part));
                    }
                }
                if !part.is_empty() || out.is_empty() {
                    out.push(part);
                }
                out.into_iter()
                    .map(|values| {
                        Publish::control(
                            self.own_telemetry_topic(),
                            &serde_json::json!({"ts": ts, "values": values}),
                        )
                    })
                    .collect()
            }
        }
    }

    fn own_attributes_topic(&self) -> &'static str {
        if self.short_topics {
            "v2/a"
        } else {
            "v1/devices/me/attributes"
        }
    }

    fn own_telemetry_topic(&self) -> &'static str {
        if self.short_topics {
            "v2/t"
        } else {
            "v1/devices/me/telemetry"
        }
    }
}
