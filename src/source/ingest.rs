//! The one way into the outbox: every source (the MQTT front, serial ports,
//! readings a platform sends down, the rumqttd link) hands what it hears to
//! an [`Ingest`], which routes it, stamps it and stores it, and counts what
//! was accepted or refused. A source that holds an acknowledgement until the
//! commit uses [`Ingest::store_held`]; the others [`Ingest::store`].

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::record::Record;
use crate::route::Router;
use crate::stats::{self, Stats};
use crate::store::{Appended, Outbox, StoreError, Tagged};

/// Router, outbox and counters, shared by every source. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    router: Arc<Mutex<Router>>,
    outbox: Outbox,
    stats: Arc<Stats>,
}

impl Ingest {
    pub fn new(router: Router, outbox: Outbox, stats: Arc<Stats>) -> Ingest {
        Ingest {
            router: Arc::new(Mutex::new(router)),
            outbox,
            stats,
        }
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

    /// The records a message on `topic` becomes; empty if no route selects it.
    pub fn route(&self, topic: &str, payload: &[u8]) -> Vec<Record> {
        self.with_router(|r| r.route(topic, payload))
    }

    /// Stores records without waiting for the commit (nothing to hold).
    pub async fn store(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let n = records.len() as u64;
        self.outbox.submit(records).await?;
        stats::add(&self.stats.ingest.accepted, n);
        Ok(())
    }

    /// [`Ingest::store`] from a blocking thread.
    pub fn store_blocking(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let n = records.len() as u64;
        self.outbox.submit_blocking(records)?;
        stats::add(&self.stats.ingest.accepted, n);
        Ok(())
    }

    /// Stores records; the commit outcome arrives on `tx` tagged `tag`, so
    /// the caller can hold an acknowledgement until then. Hand the outcome
    /// to [`Ingest::count`].
    pub async fn store_held(
        &self,
        records: Vec<Record>,
        tx: mpsc::UnboundedSender<Tagged>,
        tag: u64,
    ) -> Result<(), StoreError> {
        self.outbox.append_tagged(records, tx, tag).await
    }

    /// Counts a held append's outcome.
    pub fn count(&self, outcome: &Appended) {
        stats::add(&self.stats.ingest.accepted, outcome.stored as u64);
        stats::add(&self.stats.ingest.refused, outcome.rejected as u64);
    }

    /// Routes and stores one message that needs no acknowledgement (a
    /// platform's uplink). Returns how many records it became.
    pub async fn submit(&self, topic: &str, payload: &[u8]) -> Result<usize, StoreError> {
        let records = self.route(topic, payload);
        let n = records.len();
        if n > 0 {
            self.store(records).await?;
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
        let (payload, records) = self.with_router(|r| {
            let mut body = Map::new();
            body.insert("ts".into(), Value::from(r.stamp(device)));
            body.insert("values".into(), Value::Object(values));
            let payload = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
            let records = r.route(topic, &payload);
            (payload, records)
        });
        if !records.is_empty() {
            self.store(records).await?;
        }
        Ok(payload)
    }
}
