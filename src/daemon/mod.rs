//! The running daemon: builds the pipeline from a checked config, runs it,
//! and takes it down in order.
//!
//! Start-up order is outbox first (nothing can be accepted before there is
//! somewhere durable to put it), then the local broker and ingest, then the
//! sinks. Shutdown is the reverse, driven by one [`CancellationToken`]:
//! ingest stops, sinks stop taking new work and wait a short grace period for
//! in-flight acknowledgements, the outbox writer commits what is pending, and
//! the process exits 0.

mod health;
mod listen;
mod live;
pub mod logging;
mod signals;
mod sinks;
pub mod status_socket;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkConfig};
use crate::control::agent::OwnRpc;
use crate::control::first_start::FirstStart;
use crate::control::remote::Manager;
use crate::control::report::Outcome;
use crate::control::status::StatusSource;
use crate::route::Router;
use crate::source;
use crate::source::broker::{self, Broker};
use crate::source::Ingest;
use crate::stats::Stats;
use crate::store::Outbox;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("{0}")]
    Setup(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Stopped,
    /// SIGHUP with a valid config: the caller restarts outpost in place.
    Reload,
}

/// Runs outpost until SIGTERM or SIGINT (or a SIGHUP with a valid config,
/// read again from `config_path`, or a remote change that needs a restart).
///
/// A stored remote overlay cannot keep outpost from starting: if the start
/// fails with a change being tried, that change is set aside and the last
/// good overlay runs; if it fails with the last good one, the file's config
/// runs. Either way `config_status = rolled_back` reports the error.
pub async fn run(
    mut loaded: crate::config::Loaded,
    config_path: Option<std::path::PathBuf>,
) -> Result<Exit, DaemonError> {
    loop {
        let e = match run_once(loaded.clone(), config_path.clone()).await {
            Ok(exit) => return Ok(exit),
            Err(e) => e,
        };
        let error = format!("outpost did not start with it: {e}");
        if loaded.trying {
            tracing::error!(error = %e, "the remote change being tried stopped the start; setting it aside and starting on the last good configuration");
            let dir = loaded.file.state_dir.clone();
            if let Err(w) = crate::config::stored::set_aside(&dir, &loaded.overlay, &error) {
                tracing::warn!(error = %w, "cannot record the change set aside");
            }
            let failed = crate::config::stored::Failed {
                overlay: loaded.overlay.clone(),
                error,
            };
            let good = loaded.last_good.clone();
            loaded = match loaded.with_overlay(&good) {
                Ok(config) if !good.is_empty() => crate::config::Loaded {
                    config,
                    overlay: good,
                    trying: false,
                    ..loaded
                },
                _ => loaded.file_only(failed.error.clone()),
            };
            loaded.rolled_back = Some(failed);
        } else if !loaded.overlay.is_empty() {
            tracing::error!(error = %e, "the stored remote configuration stopped the start; starting on the file's configuration alone");
            loaded = loaded.file_only(error);
        } else {
            return Err(e);
        }
    }
}

async fn run_once(
    loaded: crate::config::Loaded,
    config_path: Option<std::path::PathBuf>,
) -> Result<Exit, DaemonError> {
    let shutdown = CancellationToken::new();
    let broker = Arc::new(std::sync::OnceLock::new());
    let running = format!("{:?}", loaded.file);
    let reload = signals::spawn(shutdown.clone(), config_path, running, broker.clone())
        .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
    let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
    run_loaded(loaded, shutdown, restart.clone(), broker).await?;
    Ok(
        if reload.requested() || restart.load(std::sync::atomic::Ordering::SeqCst) {
            Exit::Reload
        } else {
            Exit::Stopped
        },
    )
}

/// Runs outpost on `config` (no remote overlay) until `shutdown`.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let loaded = crate::config::Loaded {
        config: config.clone(),
        file: config,
        source: crate::config::Source::BuiltIn,
        base: toml::Table::new(),
        overlay: Default::default(),
        overlay_error: None,
        trying: false,
        last_good: Default::default(),
        rolled_back: None,
    };
    run_loaded(loaded, shutdown, Default::default(), Default::default()).await
}

async fn run_loaded(
    loaded: crate::config::Loaded,
    shutdown: CancellationToken,
    restart: Arc<std::sync::atomic::AtomicBool>,
    broker_cell: Arc<std::sync::OnceLock<Broker>>,
) -> Result<(), DaemonError> {
    let config = loaded.config;
    if let Some(e) = &loaded.overlay_error {
        tracing::error!(error = %e, "the stored remote configuration was not used; running the file's");
    } else if !loaded.overlay.is_empty() {
        tracing::info!(version = ?loaded.overlay.version, sections = ?loaded.overlay.sources(),
            "running with the remote configuration stored from ThingsBoard");
    }
    let sink_names: Vec<String> = config.sinks.keys().cloned().collect();
    let stats = Arc::new(Stats::new(&sink_names).with_serial(&config.serial));

    let store_path = config.store_path();
    let (outbox, writer) = Outbox::open(store_path.clone(), &config.store, &sink_names)?;
    let queued: u64 = outbox.stats().values().map(|s| s.waiting()).sum();
    tracing::info!(path = %store_path.display(), queued, synchronous = ?config.store.synchronous, "outbox open");

    let mut tasks = JoinSet::new();
    let router = Router::new(&config.routes)
        .map_err(DaemonError::Setup)?
        .with_readings(&config.readings);
    let ingest = Ingest::new(router, outbox.clone(), stats.clone());
    let local = start_broker(&config, &ingest, &shutdown, &mut tasks).await?;
    let _ = broker_cell.set(local.clone());
    let serial_stop = shutdown.child_token();
    let mut serial_tasks = JoinSet::new();
    source::serial::spawn(
        &config.serial,
        ingest.clone(),
        local.clone(),
        config.device_topics(),
        &mut serial_tasks,
        &serial_stop,
    );
    let config_file = match &loaded.source {
        crate::config::Source::File(p) => Some(p.as_path()),
        crate::config::Source::BuiltIn => None,
    };
    let first_start = FirstStart::new(&config.state_dir, config_file, &sink_names);
    tasks.spawn(first_start.clone().watch(stats.clone(), shutdown.clone()));
    let status = StatusSource {
        stats: stats.clone(),
        outbox: outbox.clone(),
        broker: Some(local.clone()),
        first_start: Some(first_start),
        state_dir: std::path::absolute(&config.state_dir).ok(),
        http: Default::default(),
    };
    let agent: Arc<dyn crate::sink::Agent> = Arc::new(OwnRpc {
        status: status.clone(),
        set_log_level: Arc::new(logging::set_level),
    });

    // Remote configuration comes through the first ThingsBoard sink.
    let remote_on = !loaded.base.is_empty()
        && config
            .sinks
            .values()
            .any(|s| matches!(s, SinkConfig::Thingsboard(_)));
    let (remote_tx, remote_rx) = mpsc::channel(64);
    let ctx = sinks::SinkCtx {
        ingest: ingest.clone(),
        agent,
        local: local.clone(),
        state_dir: config.state_dir.clone(),
        remote: None,
        topics: config.device_topics(),
    };
    let mut running = std::collections::BTreeMap::new();
    let remote_sink = config
        .sinks
        .iter()
        .find(|(_, s)| matches!(s, SinkConfig::Thingsboard(_)))
        .map(|(n, _)| n.clone())
        .filter(|_| remote_on);
    for (name, sink) in &config.sinks {
        let mut sink_ctx = ctx.clone();
        if remote_sink.as_ref() == Some(name) {
            sink_ctx.remote = Some(remote_tx.clone());
        }
        let handle = match sinks::spawn(&sink_ctx, name, sink, &shutdown) {
            Ok(h) => h,
            Err(e) => {
                // Nothing outlives a failed start: the next attempt binds
                // the same ports and opens the same outbox.
                shutdown.cancel();
                for (_, h) in running {
                    sinks::SinkHandle::stop(h).await;
                }
                serial_tasks.shutdown().await;
                tasks.shutdown().await;
                return Err(e);
            }
        };
        running.insert(name.clone(), handle);
    }
    let live = live::Live {
        ctx: sinks::SinkCtx {
            remote: remote_sink.as_ref().map(|_| remote_tx.clone()),
            ..ctx
        },
        sinks: running,
        serial: (serial_stop, serial_tasks),
        shutdown: shutdown.clone(),
        remote_sink,
    };
    // What is reported until a change arrives: the last change set aside,
    // if it was, else the last good overlay (a change on trial is reported
    // once it is confirmed).
    let outcome = match &loaded.rolled_back {
        Some(f) => Outcome::of(&f.overlay, "rolled_back", Some(f.error.clone())),
        None => Outcome::of(&loaded.last_good, "ok", None),
    };
    let manager = Manager {
        applier: live,
        base: loaded.base,
        file: loaded.file,
        config: config.clone(),
        overlay: loaded.overlay.clone(),
        last_good: loaded.last_good,
        trying: loaded.trying,
        status: status.clone(),
        store_path: store_path.clone(),
        shutdown: shutdown.clone(),
        restart,
        outcome,
    };
    drop(remote_tx);
    tasks.spawn(manager.run(remote_rx));

    tasks.spawn(expire_periodically(
        outbox.clone(),
        config.store.max_age.0,
        shutdown.clone(),
    ));

    tasks.spawn(supervisor::run(
        health::Health {
            outbox: outbox.clone(),
            router: Some(ingest.router().clone()),
            broker: Some(local.clone()),
            stats: Some(stats.clone()),
        },
        stats.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(status_socket::serve(
        status_socket::socket_path(&config.state_dir),
        status.clone(),
        outbox.clone(),
        shutdown.clone(),
    ));
    start_web(&config, &status, &ingest, &local, &shutdown, &mut tasks).await;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        routes = config.routes.len(),
        sinks = sink_names.len(),
        "outpost running"
    );
    supervisor::ready();

    shutdown.cancelled().await;
    // STOPPING=1 is said where SIGTERM arrives: a restart in place (to
    // apply a new config) says RELOADING=1 instead, and READY=1 after, or
    // systemd would wait for an exit and fail the reload.
    tracing::info!("shutting down");
    while tasks.join_next().await.is_some() {}
    // Sensor connections still finishing hold outbox handles; closing
    // commits what they submitted and refuses the rest (no PUBACK for it).
    outbox.close().await;
    let joined = tokio::task::spawn_blocking(move || writer.join());
    if tokio::time::timeout(Duration::from_secs(10), joined)
        .await
        .is_err()
    {
        tracing::error!("the outbox writer did not finish within 10s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the listeners (a clear error if an address is taken) and starts
/// the local broker, supervised by its health check.
async fn start_broker(
    config: &Config,
    ingest: &Ingest,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Broker, DaemonError> {
    let b = &config.broker;
    let mut listeners = Vec::new();
    let mut later = Vec::new();
    for spec in listen::specs(b) {
        match listen::bind(&spec).await {
            Ok(l) => {
                if spec.tls.is_some() {
                    tracing::info!(listen = %spec.addr, mutual = b.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()), "TLS listener for sensors");
                }
                listeners.push(l);
            }
            // Served later: the rest of outpost runs meanwhile.
            Err(e) => later.push((spec, e)),
        }
    }
    if !b.ack_after_commit {
        tracing::warn!(
            "broker.ack_after_commit = false: readings are acknowledged before they are on disk; \
             a crash loses those acknowledged in the last moments"
        );
    }
    let auth = broker::Auth::load(b).map_err(|e| DaemonError::Setup(e.to_string()))?;
    if b.password_file.is_some() || b.acl_file.is_some() {
        tracing::info!(access = %auth.describe(), "local broker logins and ACL loaded");
    }
    let broker = Broker::new(b, broker::Limits::of(b), ingest.clone(), auth);
    tasks.spawn(broker::run(broker.clone(), listeners, shutdown.clone()));
    let waiting: Vec<&'static str> = later.iter().map(|(spec, _)| spec.key).collect();
    for (spec, e) in later {
        listen::keep_trying(broker.clone(), spec, e, shutdown.clone(), tasks);
    }
    if waiting.is_empty() {
        tracing::info!(listen = %b.listen, listen_v5 = ?b.listen_v5, ack_after_commit = b.ack_after_commit, "local broker listening");
    } else {
        tracing::warn!(listen = %b.listen, waiting = ?waiting, "local broker started; still waiting for {} (see above)", waiting.join(", "));
    }
    Ok(broker)
}

/// Starts `[http]`. The page is an aid, not the data path: an address
/// that cannot be bound is a warning (and in `outpost status`), and
/// outpost runs on without it.
async fn start_web(
    config: &Config,
    status: &StatusSource,
    ingest: &Ingest,
    local: &Broker,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    use crate::control::web;
    let Some(addr) = config.http.addr() else {
        return;
    };
    let http = crate::source::http::HttpIngest {
        ingest: ingest.clone(),
        broker: local.clone(),
        topic: config.http.ingest_topic.clone(),
        tokens: config.http.device_tokens.clone(),
    };
    let served = match web::Web::new(
        &config.http,
        status.clone(),
        Some(http),
        config.store_path(),
    ) {
        Ok(w) => web::bind(addr).await.map(|l| (w, l)),
        Err(e) => Err(e),
    };
    let mut state = status.http.lock().unwrap_or_else(|p| p.into_inner());
    match served {
        Ok((w, listener)) => {
            let url = format!("http://{}/", listener.local_addr().unwrap_or(addr));
            tracing::info!(url = %url, logins = config.http.password_file.is_some(), ingest = config.http.ingest, "status page");
            state.url = Some(url);
            tasks.spawn(web::serve(w, listener, shutdown.clone()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no status page, /metrics or HTTP ingest (outpost runs on without them)");
            state.error = Some(e);
        }
    }
}

async fn expire_periodically(outbox: Outbox, max_age: Duration, shutdown: CancellationToken) {
    let every = max_age
        .checked_div(4)
        .unwrap_or_default()
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
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
