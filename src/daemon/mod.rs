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
use crate::control::remote::Manager;
use crate::control::report::Outcome;
use crate::control::status::StatusSource;
use crate::route::Router;
use crate::source;
use crate::source::broker::{Listeners, LocalBroker};
use crate::source::front::Front;
use crate::source::Ingest;
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
pub async fn run(
    loaded: crate::config::Loaded,
    config_path: Option<std::path::PathBuf>,
) -> Result<Exit, DaemonError> {
    let shutdown = CancellationToken::new();
    let reload = signals::spawn(shutdown.clone(), config_path)
        .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
    let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
    run_loaded(loaded, shutdown, restart.clone()).await?;
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
        config,
        source: crate::config::Source::BuiltIn,
        base: toml::Table::new(),
        overlay: Default::default(),
        overlay_error: None,
    };
    run_loaded(loaded, shutdown, Default::default()).await
}

async fn run_loaded(
    loaded: crate::config::Loaded,
    shutdown: CancellationToken,
    restart: Arc<std::sync::atomic::AtomicBool>,
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
    let queued: u64 = outbox.stats().values().map(|s| s.depth.records).sum();
    tracing::info!(path = %store_path.display(), queued, synchronous = ?config.store.synchronous, "outbox open");

    let mut tasks = JoinSet::new();
    let router = Router::new(&config.routes).map_err(DaemonError::Setup)?;
    let ingest = Ingest::new(router, outbox.clone(), stats.clone());
    let (running_ingest, local) = start_ingest(&config, &ingest, &shutdown, &mut tasks).await?;
    let serial_stop = shutdown.child_token();
    let mut serial_tasks = JoinSet::new();
    if running_ingest.front() {
        source::serial::spawn(
            &config.serial,
            ingest.clone(),
            local.clone(),
            config.device_topics(),
            &mut serial_tasks,
            &serial_stop,
        );
    }
    let status = StatusSource {
        stats: stats.clone(),
        outbox: outbox.clone(),
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
        let handle = sinks::spawn(&sink_ctx, name, sink, &shutdown)?;
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
    let manager = Manager {
        applier: live,
        base: loaded.base,
        config: config.clone(),
        overlay: loaded.overlay.clone(),
        last_good: loaded.overlay,
        status: status.clone(),
        store_path: store_path.clone(),
        shutdown: shutdown.clone(),
        restart,
        outcome: Outcome {
            version: None,
            hash: String::new(),
            status: "ok",
            error: None,
        },
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
            router: running_ingest.front().then(|| ingest.router().clone()),
            broker: Some(local.clone()),
        },
        stats.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(status_socket::serve(
        status_socket::socket_path(&config.state_dir),
        status.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        routes = config.routes.len(),
        sinks = sink_names.len(),
        "outpost running"
    );
    supervisor::ready();

    shutdown.cancelled().await;
    supervisor::stopping();
    tracing::info!("shutting down");
    if let RunningIngest::Link(thread) = running_ingest {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
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

/// How readings get from the local broker into the outbox.
enum RunningIngest {
    /// The front before rumqttd (kept alive for the local pub/sub).
    Front {
        #[allow(dead_code)]
        broker: Box<source::broker::RumqttdBroker>,
    },
    Link(std::thread::JoinHandle<()>),
}

impl RunningIngest {
    fn front(&self) -> bool {
        matches!(self, RunningIngest::Front { .. })
    }
}

async fn start_ingest(
    config: &Config,
    ingest: &Ingest,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(RunningIngest, LocalBroker), DaemonError> {
    let b = &config.broker;
    if !b.ack_after_commit {
        let broker = source::broker::start(b, Listeners::public(b)?)?;
        let local = LocalBroker {
            addr: broker.listen.v4,
            login: broker.control.clone(),
            authenticate: b.users.is_some(),
        };
        tracing::info!(listen = %b.listen, listen_v5 = ?b.listen_v5, ack_after_commit = false, "local broker listening");
        tracing::warn!(
            "broker.ack_after_commit = false: rumqttd acknowledges readings from memory; \
             a crash, or a sustained burst faster than the outbox can commit, loses acknowledged readings"
        );
        let filters = ingest
            .router()
            .lock()
            .map(|r| r.filters())
            .unwrap_or_default();
        let thread = source::link::spawn(
            broker.link_tx,
            broker.link_rx,
            filters,
            ingest.clone(),
            shutdown.clone(),
        )
        .map_err(DaemonError::Setup)?;
        return Ok((RunningIngest::Link(thread), local));
    }

    // Bind the sensor-facing addresses first: a clear error if taken.
    let mut listeners = Vec::new();
    for (addr, key) in [(Some(b.listen), "listen"), (b.listen_v5, "listen_v5")] {
        let Some(addr) = addr else { continue };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| source::broker::BrokerError::Bind {
                addr,
                what: "MQTT 3.1.1 and 5",
                key,
                source,
            })?;
        listeners.push(l);
    }
    let tls = match &b.tls {
        None => None,
        Some(t) => {
            let acceptor = source::front::tls::acceptor(t).map_err(DaemonError::Setup)?;
            let l = tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|source| source::broker::BrokerError::Bind {
                    addr: t.listen,
                    what: "MQTT over TLS",
                    key: "tls.listen",
                    source,
                })?;
            Some((l, acceptor))
        }
    };
    let broker = source::broker::start(b, Listeners::private()?)?;
    let front = Arc::new(Front {
        backend_v4: broker.listen.v4,
        backend_v5: broker.listen.v5,
        ingest: ingest.clone(),
        max_body: b.max_payload.0 as usize,
        connect_timeout: b.connect_timeout.0,
        reserved_client_id: broker.link_id.clone(),
    });
    for l in listeners {
        tasks.spawn(source::front::serve(l, front.clone(), shutdown.clone()));
    }
    if let Some((l, acceptor)) = tls {
        tracing::info!(listen = ?l.local_addr().ok(), mutual = b.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
            "TLS listener for sensors");
        tasks.spawn(source::front::tls::serve(
            l,
            acceptor,
            front.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(listen = %b.listen, listen_v5 = ?b.listen_v5, ack_after_commit = true, "local broker listening");
    let local = LocalBroker {
        addr: broker.listen.v4,
        login: broker.control.clone(),
        authenticate: b.users.is_some(),
    };
    Ok((
        RunningIngest::Front {
            broker: Box::new(broker),
        },
        local,
    ))
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
