//! Readings that come from an upstream platform rather than from the LAN
//! (LoRaWAN uplinks from The Things Stack): they take a local topic and go
//! through the same routes into the outbox as any sensor's reading.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::route::Router;
use crate::stats::{self, Stats};
use crate::store::Outbox;

/// Routes each (topic, payload) and stores the records, until every sender
/// is gone.
pub async fn run(
    mut readings: mpsc::Receiver<(String, Vec<u8>)>,
    router: Arc<Mutex<Router>>,
    outbox: Outbox,
    stats: Arc<Stats>,
) {
    while let Some((topic, payload)) = readings.recv().await {
        let records = match router.lock() {
            Ok(mut r) => r.route(&topic, &payload),
            Err(poisoned) => poisoned.into_inner().route(&topic, &payload),
        };
        if records.is_empty() {
            tracing::debug!(%topic, "no route selects this upstream reading");
            continue;
        }
        let n = records.len() as u64;
        if outbox.submit(records).await.is_err() {
            return;
        }
        stats::add(&stats.ingest.accepted, n);
    }
}
