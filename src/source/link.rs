//! Ingest through rumqttd's in-process link.
//!
//! The link subscribes to every route's filter and hands each matching
//! message to the router, which makes records, which go to the outbox. The
//! link is QoS 0 and the sensor's PUBACK is sent by rumqttd, not held until
//! the commit, so a reading acknowledged a moment before a crash can be lost.
//! Messages that match no route never reach the link.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;
use tokio_util::sync::CancellationToken;

use super::Ingest;

/// Subscribes the link to the route filters and starts the ingest thread.
pub fn spawn(
    mut link_tx: LinkTx,
    mut link_rx: LinkRx,
    filters: Vec<String>,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    for filter in filters {
        link_tx
            .subscribe(filter.clone())
            .map_err(|e| format!("cannot subscribe the ingest link to `{filter}`: {e}"))?;
    }
    std::thread::Builder::new()
        .name("ingest-link".into())
        .spawn(move || {
            // The link must outlive the loop: dropping its sender closes it.
            let _keep = link_tx;
            while !shutdown.is_cancelled() {
                match link_rx.recv_deadline(Instant::now() + Duration::from_millis(200)) {
                    Ok(Some(Notification::Forward(f))) => {
                        let Ok(topic) = std::str::from_utf8(&f.publish.topic) else {
                            continue;
                        };
                        let records = ingest.route(topic, &f.publish.payload);
                        if !records.is_empty() && ingest.store_blocking(records).is_err() {
                            break;
                        }
                    }
                    // The router paused this link because its buffer filled;
                    // it resumes only when told the link is ready again.
                    Ok(Some(Notification::Unschedule)) => {
                        if link_rx.ready().is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "ingest link to the local broker closed");
                        break;
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the ingest thread: {e}"))
}
