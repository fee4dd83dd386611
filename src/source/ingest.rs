//! The one way into the outbox: every source (the local broker, serial
//! ports, readings a platform sends down) hands what it hears to an
//! [`Ingest`], which routes it, stamps it, checks it against what each sink
//! can send, stores it, and counts what was accepted or refused.
//!
//! A record its sink could never send is refused here, at ingest, where
//! the sensor can still be told: an MQTT 5 client gets the PUBACK reason
//! code and nothing is stored; for a 3.1.1 client or a serial port, which
//! cannot be told, it goes straight to the dead letters with the reason
//! (and the sensor gets its PUBACK, so it does not resend it forever).

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::record::Record;
use crate::route::{Admit, Refusal, Routed, Router};
use crate::stats::{self, Stats};
use crate::store::{Appended, Outbox, Qos2Mark, StoreError, Tagged};
use crate::throttle::Throttle;

/// Router, outbox and counters, shared by every source. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    router: Arc<Mutex<Router>>,
    outbox: Outbox,
    stats: Arc<Stats>,
    logs: Arc<Mutex<Throttle>>,
    presence: super::presence::Presence,
}

impl Ingest {
    pub fn new(router: Router, outbox: Outbox, stats: Arc<Stats>) -> Ingest {
        Ingest {
            router: Arc::new(Mutex::new(router)),
            outbox,
            stats,
            logs: Arc::new(Mutex::new(Throttle::default())),
            presence: Default::default(),
        }
    }

    /// Where sources say that a device went away.
    pub fn presence(&self) -> &super::presence::Presence {
        &self.presence
    }

    /// The shared router (the watchdog checks its lock; a remote change
    /// swaps its routes).
    pub fn router(&self) -> &Arc<Mutex<Router>> {
        &self.router
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Runs `f` with the router locked. A panic elsewhere while it was held
    /// does not stop ingest (the router's state is a cache of stamps).
    fn with_router<T>(&self, f: impl FnOnce(&mut Router) -> T) -> T {
        match self.router.lock() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// What `sink` takes, from now on.
    pub fn set_admit(&self, sink: &str, admit: Arc<dyn Admit>) {
        self.with_router(|r| r.set_admit(sink, admit));
    }

    /// What a message on `topic` becomes: the records to store, and the
    /// ones refused. Empty if no route selects it.
    pub fn route(&self, topic: &str, payload: &[u8]) -> Routed {
        let routed = self.with_router(|r| r.route(topic, payload));
        if routed.ts_replaced {
            stats::add(&self.stats.ingest.ts_replaced, 1);
        }
        routed
    }

    /// Counts and logs (once per device and reason a minute) refused records.
    pub fn note_refused(&self, refused: &[(Record, Refusal)], told: bool) {
        if refused.is_empty() {
            return;
        }
        stats::add(&self.stats.ingest.undeliverable, refused.len() as u64);
        for (r, why) in refused {
            if let Some(sink) = self.stats.sinks.get(&r.sink) {
                stats::add(&sink.undeliverable, 1);
            }
            let key = format!("{}\u{0}{}\u{0}{}", r.sink, r.device, why.reason);
            let due = self.logs.lock().ok().and_then(|mut l| l.due(&key));
            if let Some(count) = due {
                let device: String = r.device.chars().take(64).collect();
                if told {
                    tracing::warn!(sink = %r.sink, device = %device, reason = %why.reason, code = why.code, count,
                        "reading refused at ingest: its sink could never send it (the MQTT 5 client was told)");
                } else {
                    tracing::warn!(sink = %r.sink, device = %device, reason = %why.reason, count,
                        "reading its sink could never send: moved to the dead letters (see `outpost dead-letters`)");
                }
            }
        }
    }

    /// Stores a routed message that needs no acknowledgement: its records
    /// queued, its refused ones in the dead letters.
    pub async fn store(&self, routed: Routed) -> Result<(), StoreError> {
        self.store_held(routed, None, None).await
    }

    /// [`Ingest::store`], with the commit's outcome sent on `done` (tagged)
    /// so the caller can hold an acknowledgement until then, and an
    /// incoming QoS 2 packet id recorded in the same transaction. Hand the
    /// outcome to [`Ingest::count`].
    pub async fn store_held(
        &self,
        routed: Routed,
        mark: Option<Qos2Mark>,
        done: Option<(mpsc::UnboundedSender<Tagged>, u64)>,
    ) -> Result<(), StoreError> {
        self.note_refused(&routed.refused, false);
        let held = done.is_some();
        let n = routed.records.len() as u64;
        let dead = routed
            .refused
            .into_iter()
            .map(|(r, why)| (r, why.reason))
            .collect();
        self.outbox
            .append_with_dead(routed.records, dead, mark, done)
            .await?;
        if !held {
            stats::add(&self.stats.ingest.accepted, n);
        }
        Ok(())
    }

    /// [`Ingest::store`] from a blocking thread (records only).
    pub fn store_blocking(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let n = records.len() as u64;
        self.outbox.submit_blocking(records)?;
        stats::add(&self.stats.ingest.accepted, n);
        Ok(())
    }

    /// Stores records and waits for the commit (a request answered only
    /// once its reading is on disk); counts the outcome.
    pub async fn commit(&self, records: Vec<Record>) -> Result<Appended, StoreError> {
        let outcome = self.outbox.append(records).await?;
        self.count(&outcome);
        Ok(outcome)
    }

    /// Counts a held append's outcome.
    pub fn count(&self, outcome: &Appended) {
        stats::add(&self.stats.ingest.accepted, outcome.stored as u64);
        stats::add(&self.stats.ingest.refused, outcome.rejected as u64);
    }

    /// Routes and stores one message that needs no acknowledgement (a
    /// platform's uplink). Returns how many records it became.
    pub async fn submit(&self, topic: &str, payload: &[u8]) -> Result<usize, StoreError> {
        let routed = self.route(topic, payload);
        let n = routed.records.len();
        if n > 0 || !routed.refused.is_empty() {
            self.store(routed).await?;
        }
        Ok(n)
    }

    /// A reading made of values (a serial line, a Modbus poll): stamped with
    /// the device's next time, routed on `topic` and stored. Returns the
    /// payload as routed (`{"ts":..,"values":{..}}`), for a local copy.
    pub async fn reading(
        &self,
        topic: &str,
        device: &str,
        values: Map<String, Value>,
    ) -> Result<Vec<u8>, StoreError> {
        let (payload, routed) = self.with_router(|r| {
            let (ts, source) = r.stamp(device);
            let mut body = Map::new();
            body.insert("ts".into(), Value::from(ts));
            body.insert("values".into(), Value::Object(values));
            let payload = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
            let mut routed = r.route(topic, &payload);
            // The ts in the payload is outpost's own stamp: as provisional
            // as the clock it came from.
            let ours = routed
                .records
                .iter_mut()
                .chain(routed.refused.iter_mut().map(|(r, _)| r));
            for rec in ours.filter(|rec| rec.ts == ts) {
                rec.ts_source = source;
            }
            (payload, routed)
        });
        if !routed.records.is_empty() || !routed.refused.is_empty() {
            self.store(routed).await?;
        }
        Ok(payload)
    }
}
