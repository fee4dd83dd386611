//! The running daemon: builds the pipeline from a checked config, runs it,
//! and takes it down in order.
//!
//! Start-up order is outbox first (nothing can be accepted before there is
//! somewhere durable to put it), then the local broker and ingest, then the
//! sinks. Shutdown is the reverse, driven by one [`CancellationToken`]:
//! ingest stops, sinks stop taking new work and wait a short grace period for
//! in-flight acknowledgements, the outbox writer commits what is pending, and
//! the process exits 0.

mod signals;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkConfig};
use crate::route::Router;
use crate::sink::mqtt::MqttEncoder;
use crate::sink::uplink::Uplink;
use crate::source;
use crate::stats::Stats;
use crate::store::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Broker(#[from] source::broker::BrokerError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Setup(String),
}

/// Runs outpost until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    signals::spawn(shutdown.clone())
        .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
    run_until(config, shutdown).await
}

/// Runs outpost until `shutdown` is cancelled.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let sink_names: Vec<String> = config.sinks.keys().cloned().collect();
    let stats = Arc::new(Stats::new(&sink_names));

    let store_path = config.store_path();
    let (outbox, writer) = Outbox::open(store_path.clone(), &config.store, &sink_names)?;
    let queued: u64 = outbox.stats().values().map(|s| s.depth.records).sum();
    tracing::info!(path = %store_path.display(), queued, synchronous = ?config.store.synchronous, "outbox open");

    let mut tasks = JoinSet::new();
    for (name, sink) in &config.sinks {
        let sink_stats = stats.sinks.get(name).cloned().unwrap_or_default();
        match sink {
            SinkConfig::Mqtt(m) => {
                let uplink = Uplink::new(name, m, MqttEncoder::new(m), outbox.clone(), sink_stats)?;
                tasks.spawn(uplink.run(shutdown.clone()));
            }
        }
    }

    let router = Router::new(&config.routes).map_err(DaemonError::Setup)?;
    let broker = source::broker::start(&config.broker)?;
    let ingest = source::link::spawn(
        broker.link_tx,
        broker.link_rx,
        router,
        outbox.clone(),
        stats.clone(),
        shutdown.clone(),
    )
    .map_err(DaemonError::Setup)?;

    tasks.spawn(expire_periodically(
        outbox.clone(),
        config.store.max_age.0,
        shutdown.clone(),
    ));

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        routes = config.routes.len(),
        sinks = sink_names.len(),
        "outpost running"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    while tasks.join_next().await.is_some() {}
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn expire_periodically(outbox: Outbox, max_age: Duration, shutdown: CancellationToken) {
    let every = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if outbox.expire().await.is_err() {
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
