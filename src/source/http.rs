//! HTTP ingest: `POST /ingest/{device}` for devices that speak HTTP rather
//! than MQTT. A reading posted here is what an MQTT PUBLISH on the
//! configured topic would be: the same login and ACL as a broker client,
//! the same routes into the outbox, and the answer only after the commit.
//! The web server (in `control::web`) only carries requests to [`HttpIngest`].

use std::collections::BTreeMap;

use crate::access::{constant_time_eq, Access};
use crate::source::broker::Broker;
use crate::source::Ingest;
use crate::store::StoreError;

/// Why a POST was not stored; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 401: no login, or a wrong one.
    #[error("{0}")]
    Login(&'static str),
    /// 403: the ACL or the device token says no.
    #[error("{0}")]
    Denied(String),
    /// 400: the device name or the body is not acceptable.
    #[error("{0}")]
    Bad(String),
    /// 422: no sink could ever take it (nothing stored).
    #[error("{0}")]
    Undeliverable(String),
    /// 503: the outbox cannot take it now; try again later.
    #[error("{0}")]
    Busy(String),
}

/// What the server needs to take a reading in.
#[derive(Clone)]
pub struct HttpIngest {
    pub ingest: Ingest,
    pub broker: Broker,
    /// `sensors/{device}/telemetry`.
    pub topic: String,
    pub tokens: BTreeMap<String, String>,
}

/// A device name usable in a topic: 1-128 characters, no `/`, wildcard,
/// control character or `$` at the start.
fn check_device(device: &str) -> Result<(), Refused> {
    let ok = !device.is_empty()
        && device.chars().count() <= 128
        && !device.starts_with('$')
        && !device
            .chars()
            .any(|c| c == '/' || c == '+' || c == '#' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Refused::Bad(
            "the device name must be 1-128 characters without `/`, `+`, `#`, control characters or a leading `$`".into(),
        ))
    }
}

impl HttpIngest {
    /// Takes one reading; `Ok(records stored)` once it is committed.
    /// `login` is the HTTP Basic username and password, if given.
    pub async fn post(
        &self,
        device: &str,
        login: Option<(&str, &[u8])>,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<usize, Refused> {
        check_device(device)?;
        if let Some(want) = self.tokens.get(device) {
            let given = token.unwrap_or_default();
            if !constant_time_eq(want.as_bytes(), given.as_bytes()) {
                return Err(Refused::Denied(format!(
                    "device {device} needs its token in the X-Device-Token header"
                )));
            }
        }
        let auth = self.broker.auth();
        let user = auth
            .login(login.map(|l| l.0), login.map(|l| l.1), None)
            .map_err(|r| Refused::Login(r.reason()))?;
        let topic = crate::topic::fill(&self.topic, device, "");
        if !auth.may(user.as_deref(), device, &topic, Access::Write) {
            stats_denied(&self.broker);
            return Err(Refused::Denied(format!(
                "the ACL does not let this login publish on {topic}"
            )));
        }
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
            return Err(Refused::Bad(format!("the body is not JSON: {e}")));
        }
        let routed = self.ingest.route(&topic, body);
        if !routed.refused.is_empty() {
            let why = routed
                .refused
                .first()
                .map(|(_, r)| r.reason.clone())
                .unwrap_or_default();
            self.ingest.note_refused(&routed.refused, true);
            return Err(Refused::Undeliverable(why));
        }
        if routed.records.is_empty() {
            return Err(Refused::Undeliverable(format!(
                "no [[route]] takes the topic {topic}, so the reading would go nowhere"
            )));
        }
        let done = self
            .ingest
            .commit(routed.records)
            .await
            .map_err(|e| match e {
                StoreError::Closed => Refused::Busy("outpost is shutting down".into()),
                e => Refused::Busy(e.to_string()),
            })?;
        if done.rejected > 0 {
            return Err(Refused::Busy(
                "the outbox is full (store.max_bytes, full_policy = \"reject_new\")".into(),
            ));
        }
        // Local subscribers see it as they would an MQTT reading.
        self.broker.publish(&topic, body.to_vec(), false);
        Ok(done.stored)
    }
}

fn stats_denied(broker: &Broker) {
    crate::stats::add(&broker.counters().denied, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_that_would_break_a_topic_are_refused() {
        for bad in ["", "a/b", "a+", "#", "$SYS", "a\nb", &"x".repeat(129)] {
            assert!(check_device(bad).is_err(), "{bad:?}");
        }
        for good in ["t1", "greenhouse-3", "Ünit_7", &"x".repeat(128)] {
            assert!(check_device(good).is_ok(), "{good:?}");
        }
    }
}
