//! Starting (and restarting) one sink: its uplink session and, for the
//! platforms with a downlink, its client on the local broker. Each sink runs
//! under its own cancellation token, a child of the daemon's, so a remote
//! configuration change can restart one sink and leave the rest running.
//!
//! Every task of a sink is supervised: if it ends while outpost is not
//! stopping (a panic, a lost channel), it is built again from the config
//! and restarted after a backoff (1 s doubling to 1 min), counted in the
//! sink's `restarts`. Its records stay queued meanwhile; the channels the
//! other parts hold stay open.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::config::SinkConfig;
use crate::control::downlink;
use crate::sink::mqtt::MqttEncoder;
use crate::sink::session::{self, inbox, Backoff, SessionIo, Uplink};
use crate::sink::thethingsio::{self, Thethingsio};
use crate::sink::thingsboard::{self, provision, Thingsboard};
use crate::sink::thingspeak::Thingspeak;
use crate::sink::ttn::{self, Ttn};
use crate::sink::{Agent, ControlEvent, Platform, Upstream};
use crate::source::broker::Broker;
use crate::source::Ingest;
use crate::stats::{self, SinkStats};
use crate::topic::{filter_of, DeviceTopics};

/// What every sink is built from.
#[derive(Clone)]
pub struct SinkCtx {
    pub ingest: Ingest,
    pub agent: Arc<dyn Agent>,
    pub local: Broker,
    pub state_dir: PathBuf,
    /// Where the ThingsBoard sink that carries the remote configuration
    /// hands outpost's own shared attributes.
    pub remote: Option<mpsc::Sender<ControlEvent>>,
    /// The local device topics for RPC and attributes.
    pub topics: DeviceTopics,
}

/// A running sink.
pub struct SinkHandle {
    pub cancel: CancellationToken,
    pub tasks: Vec<JoinHandle<()>>,
    /// Platforms that take reports (ThingsBoard): what outpost says about
    /// itself goes upstream through this.
    pub upstream: Option<mpsc::Sender<Upstream>>,
}

impl SinkHandle {
    /// Stops the sink (its in-flight acknowledgements get the usual grace).
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// One run of one task of a sink.
type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Builds a run of a task; called again to restart it.
type Make = Box<dyn FnMut() -> Result<Run, DaemonError> + Send>;

/// Starts sink `name`. What keeps it from running (a bad CA file or
/// certificate, provisioning) keeps just this sink waiting, with its
/// records queued, and is tried again with backoff.
pub fn spawn(
    ctx: &SinkCtx,
    name: &str,
    sink: &SinkConfig,
    parent: &CancellationToken,
) -> Result<SinkHandle, DaemonError> {
    let cancel = parent.child_token();
    // A sink added while running gets its counters here.
    let stats = ctx.ingest.stats().sinks.add(name);
    let mut upstream = None;
    let parts = match sink {
        SinkConfig::Mqtt(_) | SinkConfig::Thingspeak(_) => {
            vec![(
                "session",
                uplink(ctx, name, sink, SessionIo::default(), None, &cancel),
            )]
        }
        SinkConfig::Ttn(t) => {
            let known = ttn::known();
            let io = SessionIo {
                ingest: Some(ctx.ingest.clone()),
                ..SessionIo::default()
            };
            let session = uplink(ctx, name, sink, io, Some(known.clone()), &cancel);
            let mut parts = vec![("session", session)];
            if t.rpc {
                let (ctx, t, cancel) = (ctx.clone(), t.clone(), cancel.clone());
                let make: Make = Box::new(move || {
                    Ok(Box::pin(ttn::rpc_bridge(
                        ctx.local.clone(),
                        ctx.topics.clone(),
                        t.downlink_topic.clone(),
                        known.clone(),
                        ctx.ingest.clone(),
                        cancel.clone(),
                    )))
                });
                parts.push(("rpc", make));
            }
            parts
        }
        SinkConfig::Thethingsio(_) => {
            // Realtime updates go out on the local broker.
            let (local_tx, local_rx) = inbox(256);
            let (replies_tx, replies) = inbox(1);
            let local = local_side(
                ctx,
                None,
                Vec::new(),
                Duration::from_secs(10),
                local_rx,
                replies_tx,
                &cancel,
            );
            let io = SessionIo {
                local: Some(local_tx),
                upstream: Some(replies),
                ..SessionIo::default()
            };
            vec![
                ("local", local),
                ("session", uplink(ctx, name, sink, io, None, &cancel)),
            ]
        }
        SinkConfig::Thingsboard(t) => {
            let (local_tx, local_rx) = inbox(256);
            let (upstream_tx, upstream_rx) = inbox(256);
            let watch = if t.firmware.enabled {
                vec![t.firmware.result_topic.clone()]
            } else {
                Vec::new()
            };
            let local = local_side(
                ctx,
                Some(filter_of(&t.rpc_response_topic)),
                watch,
                t.rpc_timeout.0,
                local_rx,
                upstream_tx.clone(),
                &cancel,
            );
            upstream = Some(upstream_tx.clone());
            let io = SessionIo {
                local: Some(local_tx),
                upstream: Some(upstream_rx),
                ingest: None,
                agent: Some(ctx.agent.clone()),
                control: ctx.remote.clone(),
            };
            let mut parts = vec![
                ("local", local),
                ("session", uplink(ctx, name, sink, io, None, &cancel)),
            ];
            if t.mode == crate::config::TbMode::Gateway {
                parts.push(("presence", presence(ctx, upstream_tx, &cancel)));
                for (device, token) in &t.firmware.child_tokens {
                    parts.extend(child_firmware(ctx, name, t, device, token, &cancel));
                }
            }
            parts
        }
    };
    let mut tasks = Vec::with_capacity(parts.len());
    for (part, mut make) in parts {
        // The first build runs now. One that fails (a CA file missing, a
        // certificate that cannot be used) keeps this sink waiting, its
        // records queued, and is tried again with backoff; the rest of
        // outpost runs.
        let first = match make() {
            Ok(run) => Some(run),
            Err(e) => {
                tracing::error!(sink = %name, part, error = %e,
                    "sink not started: {e}; its readings stay queued and it is tried again");
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(format!("not started: {e}"));
                }
                None
            }
        };
        tasks.push(tokio::spawn(supervise(
            name.to_string(),
            part,
            stats.clone(),
            cancel.clone(),
            first,
            make,
        )));
    }
    Ok(SinkHandle {
        cancel,
        tasks,
        upstream,
    })
}

/// Runs a task of sink `sink`, and again whenever it ends while the sink
/// is not stopping.
async fn supervise(
    sink: String,
    part: &'static str,
    stats: Arc<SinkStats>,
    cancel: CancellationToken,
    first: Option<Run>,
    mut make: Make,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut next = first;
    let mut said = None::<String>;
    loop {
        if let Some(run) = next.take() {
            stats.running.fetch_add(1, Ordering::Relaxed);
            stats.down_since_ms.store(0, Ordering::Relaxed);
            let started = Instant::now();
            let outcome = tokio::spawn(run).await;
            stats.running.fetch_sub(1, Ordering::Relaxed);
            if cancel.is_cancelled() {
                return;
            }
            stats
                .down_since_ms
                .store(crate::clock::mono_ms().max(1), Ordering::Relaxed);
            stats::add(&stats.restarts, 1);
            if started.elapsed() > Duration::from_secs(600) {
                backoff.reset();
            }
            let why = match outcome {
                Ok(()) => "it ended".to_string(),
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => panic_text(panic.as_ref()),
                    Err(e) => e.to_string(),
                },
            };
            tracing::error!(sink = %sink, part, reason = %why, restarts = stats::get(&stats.restarts),
                "a task of this sink stopped unexpectedly; restarting it (its records stay queued)");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = cancel.cancelled() => return,
        }
        match make() {
            Ok(run) => next = Some(run),
            Err(e) => {
                let text = e.to_string();
                if said.as_ref() != Some(&text) {
                    tracing::error!(sink = %sink, part, error = %e, "cannot start a task of this sink: {e}; trying again");
                }
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(format!("not started: {text}"));
                }
                said = Some(text);
            }
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("panicked: {text}")
}

/// The local side of a downlink: outpost's client on the local broker.
fn local_side(
    ctx: &SinkCtx,
    response_filter: Option<String>,
    watch: Vec<String>,
    timeout: Duration,
    commands: session::Inbox<crate::sink::Downlink>,
    replies: mpsc::Sender<Upstream>,
    cancel: &CancellationToken,
) -> Make {
    let (broker, cancel) = (ctx.local.clone(), cancel.clone());
    Box::new(move || {
        Ok(Box::pin(downlink::run(
            broker.clone(),
            response_filter.clone(),
            watch.clone(),
            timeout,
            commands.clone(),
            replies.clone(),
            cancel.clone(),
        )))
    })
}

/// A child's firmware session and its local side (see
/// `sink::thingsboard::child_firmware`).
fn child_firmware(
    ctx: &SinkCtx,
    sink: &str,
    t: &crate::config::ThingsboardSinkConfig,
    device: &str,
    token: &str,
    cancel: &CancellationToken,
) -> [(&'static str, Make); 2] {
    use crate::sink::thingsboard::child_firmware::ChildFirmware;
    let (down_tx, down_rx) = inbox(64);
    let (up_tx, up_rx) = inbox(64);
    let local = local_side(
        ctx,
        None,
        vec![ChildFirmware::result_topic(t, device)],
        Duration::from_secs(10),
        down_rx,
        up_tx,
        cancel,
    );
    let io = SessionIo {
        local: Some(down_tx),
        upstream: Some(up_rx),
        ..SessionIo::default()
    };
    let name = format!("{sink}/firmware/{device}");
    let settings = ChildFirmware::settings(t, device, token);
    let (t, device, ctx, cancel) = (t.clone(), device.to_string(), ctx.clone(), cancel.clone());
    let session: Make = Box::new(move || {
        let platform = ChildFirmware::new(&t, &device, &ctx.state_dir);
        let stats = Arc::new(SinkStats::default());
        let u = Uplink::new(
            &name,
            &settings,
            platform,
            ctx.ingest.outbox().clone(),
            stats,
        )?
        .queueless()
        .with_io(io.clone());
        Ok(Box::pin(u.run(cancel.clone())))
    });
    [("child firmware local", local), ("child firmware", session)]
}

/// Hands the notices of devices going away to a gateway sink's session.
fn presence(ctx: &SinkCtx, upstream: mpsc::Sender<Upstream>, cancel: &CancellationToken) -> Make {
    let (presence, cancel) = (ctx.ingest.presence().clone(), cancel.clone());
    Box::new(move || {
        let mut rx = presence.subscribe();
        let (upstream, cancel) = (upstream.clone(), cancel.clone());
        Ok(Box::pin(async move {
            loop {
                let gone = tokio::select! {
                    g = rx.recv() => g,
                    _ = cancel.cancelled() => return,
                };
                match gone {
                    Ok(g) => {
                        if upstream.send(Upstream::Presence(g)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "missed notices of devices going away (idle children are still disconnected)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }))
    })
}

/// The uplink session of a sink. Each build registers what the sink
/// admits with ingest. `known`: the LoRaWAN devices a TTN sink shares with
/// its RPC bridge.
fn uplink(
    ctx: &SinkCtx,
    name: &str,
    sink: &SinkConfig,
    io: SessionIo,
    known: Option<ttn::Known>,
    cancel: &CancellationToken,
) -> Make {
    let (ctx, name, sink, cancel) = (ctx.clone(), name.to_string(), sink.clone(), cancel.clone());
    Box::new(move || {
        let outbox = ctx.ingest.outbox().clone();
        let stats = ctx.ingest.stats().sinks.get(&name).unwrap_or_default();
        let run: Run = match &sink {
            SinkConfig::Mqtt(m) => {
                let settings = MqttEncoder::settings(m);
                session::client_identity(&name, &settings);
                let platform = MqttEncoder::new(m);
                ctx.ingest.set_admit(&name, platform.admission());
                let u = Uplink::new(&name, &settings, platform, outbox, stats)?;
                Box::pin(u.run(cancel.clone()))
            }
            SinkConfig::Thingspeak(t) => {
                let platform = Thingspeak::new(t);
                ctx.ingest.set_admit(&name, platform.admission());
                let u = Uplink::new(&name, &Thingspeak::settings(t), platform, outbox, stats)?
                    .with_rate_limit(&Thingspeak::rate(t));
                Box::pin(u.run(cancel.clone()))
            }
            SinkConfig::Thethingsio(t) => {
                // What it takes does not depend on the thing token.
                ctx.ingest
                    .set_admit(&name, Thethingsio::new(&name, t, "").admission());
                let (name, t, io) = (name.clone(), t.clone(), io.clone());
                let (state_dir, cancel) = (ctx.state_dir.clone(), cancel.clone());
                // The token comes from the config, an earlier activation, or
                // an activation now; ingest runs meanwhile and records queue.
                Box::pin(async move {
                    let Some(token) =
                        thethingsio::thing_token(&name, &t, &state_dir, &cancel).await
                    else {
                        return;
                    };
                    let platform = Thethingsio::new(&name, &t, &token);
                    match Uplink::new(&name, &Thethingsio::settings(&t), platform, outbox, stats) {
                        Ok(u) => u.with_io(io).run(cancel).await,
                        Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                    }
                })
            }
            SinkConfig::Thingsboard(t) => {
                let platform = Thingsboard::new(&name, t, stats.clone())
                    .with_remote(io.control.is_some())
                    .with_state_dir(&ctx.state_dir);
                ctx.ingest.set_admit(&name, platform.admission());
                let base = Thingsboard::settings(t);
                let rate = thingsboard::initial_rate(t);
                if t.provision_device_key.is_none() {
                    let platform = platform.with_identity(session::client_identity(&name, &base));
                    let u = Uplink::new(&name, &base, platform, outbox, stats)?
                        .with_io(io.clone())
                        .with_budget(rate.clone());
                    Box::pin(u.run(cancel.clone()))
                } else {
                    // Credentials come from provisioning (stored, or asked
                    // for now); ingest runs meanwhile and records queue.
                    let (name, t, io) = (name.clone(), t.clone(), io.clone());
                    let (state_dir, cancel) = (ctx.state_dir.clone(), cancel.clone());
                    Box::pin(async move {
                        let Some(creds) =
                            provision::credentials(&name, &t, &base, &state_dir, &cancel).await
                        else {
                            return;
                        };
                        let settings = creds.apply(base);
                        let platform =
                            platform.with_identity(session::client_identity(&name, &settings));
                        match Uplink::new(&name, &settings, platform, outbox, stats) {
                            Ok(u) => u.with_io(io).with_budget(rate).run(cancel).await,
                            Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                        }
                    })
                }
            }
            SinkConfig::Ttn(t) => {
                let known = known.clone().unwrap_or_else(ttn::known);
                let platform = Ttn::new(t, known);
                ctx.ingest.set_admit(&name, platform.admission());
                let u = Uplink::new(&name, &Ttn::settings(t), platform, outbox, stats)?
                    .with_io(io.clone());
                Box::pin(u.run(cancel.clone()))
            }
        };
        Ok(run)
    })
}
