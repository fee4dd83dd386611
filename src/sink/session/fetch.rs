//! Reading the next records of a sink's queue. Platforms that order data
//! by timestamp (ThingsBoard) read the queue in two parts: what arrived
//! during this connection goes first, the backlog after it, so a long drain
//! never holds back current readings.

use super::flight::{Flight, LiveSplit};
use super::{Uplink, ENCODE_BATCH};
use crate::record::Record;
use crate::sink::Platform;
use crate::store::StoreError;

impl<E: Platform> Uplink<E> {
    /// Fetches the next records. With a live split, what arrived since the
    /// connection began goes before the backlog, so a long drain never
    /// holds back current readings.
    pub(super) async fn refill(&mut self, flight: &mut Flight) -> Result<(), StoreError> {
        let limit = self.window.max(ENCODE_BATCH);
        let Some(split) = flight.live.as_mut() else {
            let batch = self.outbox.fetch(&self.name, flight.cursor, limit).await?;
            flight.refill(batch, limit);
            return Ok(());
        };
        let live = self.read_live(split, limit).await?;
        let backlog = if split.backlog_done {
            Vec::new()
        } else {
            self.outbox
                .fetch_range(
                    &self.name,
                    flight.cursor,
                    split.floor.saturating_add(1),
                    limit,
                )
                .await?
        };
        split.backlog_done |= backlog.len() < limit;
        if let Some(last) = backlog.last() {
            flight.cursor = last.id;
        }
        flight.more = live.len() >= limit || !split.backlog_done;
        flight.fetched_live.extend(live);
        flight.fetched.extend(backlog);
        Ok(())
    }

    /// The next rows that arrived during this connection.
    pub(super) async fn read_live(
        &self,
        split: &mut LiveSplit,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let live = self
            .outbox
            .fetch_range(&self.name, split.live_cursor, i64::MAX, limit)
            .await?;
        if let Some(last) = live.last() {
            split.live_cursor = last.id;
        }
        Ok(live)
    }

    /// Puts readings that arrived during this connection at the front.
    pub(super) async fn refill_live(&mut self, flight: &mut Flight) -> Result<(), StoreError> {
        let limit = self.window.max(ENCODE_BATCH);
        let Some(split) = flight.live.as_mut() else {
            return Ok(());
        };
        let live = self.read_live(split, limit).await?;
        if live.len() >= limit {
            flight.more = true;
        }
        flight.fetched_live.extend(live);
        Ok(())
    }
}
