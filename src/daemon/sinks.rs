//! Starting (and restarting) one sink: its uplink session and, for
//! ThingsBoard, its downlink client on the local broker. Each sink runs
//! under its own cancellation token, a child of the daemon's, so a remote
//! configuration change can restart one sink and leave the rest running.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::config::SinkConfig;
use crate::control::downlink::{self, LocalBroker};
use crate::control::status::StatusSource;
use crate::sink::mqtt::MqttEncoder;
use crate::sink::provision;
use crate::sink::thethingsio::{self, Thethingsio};
use crate::sink::thingsboard::Thingsboard;
use crate::sink::thingspeak::Thingspeak;
use crate::sink::ttn::Ttn;
use crate::sink::uplink::{self, Settings, Uplink};
use crate::sink::Publish;
use crate::stats::Stats;
use crate::store::Outbox;

/// What every sink is built from.
#[derive(Clone)]
pub struct SinkCtx {
    pub outbox: Outbox,
    pub stats: Arc<Stats>,
    pub status: StatusSource,
    pub local: LocalBroker,
    pub state_dir: PathBuf,
    /// Where ThingsBoard sinks hand outpost's own shared attributes.
    pub remote: Option<mpsc::Sender<crate::control::remote::Event>>,
    /// The routes, for readings that come from a platform (TTN uplinks).
    pub router: Option<Arc<std::sync::Mutex<crate::route::Router>>>,
    /// The local device topics for RPC and attributes.
    pub topics: crate::source::serial::local::Topics,
}

/// A running sink.
pub struct SinkHandle {
    pub cancel: CancellationToken,
    pub tasks: Vec<JoinHandle<()>>,
    /// ThingsBoard: publishes outpost makes itself (reports, health) go
    /// upstream through this.
    pub publish: Option<mpsc::Sender<Publish>>,
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

/// Starts sink `name`. Fails only on what must stop startup (a bad URL or
/// CA file); certificate and provisioning problems keep just this sink
/// waiting, with its records queued.
pub fn spawn(
    ctx: &SinkCtx,
    name: &str,
    sink: &SinkConfig,
    parent: &CancellationToken,
) -> Result<SinkHandle, DaemonError> {
    let cancel = parent.child_token();
    let sink_stats = ctx.stats.sinks.get(name).cloned().unwrap_or_default();
    let mut tasks = Vec::new();
    match sink {
        SinkConfig::Mqtt(m) => {
            let settings = Settings::from(m.as_ref());
            uplink::client_identity(name, &settings);
            let uplink = Uplink::new(
                name,
                &settings,
                MqttEncoder::new(m),
                ctx.outbox.clone(),
                sink_stats,
            )?;
            tasks.push(tokio::spawn(uplink.run(cancel.clone())));
            Ok(SinkHandle {
                cancel,
                tasks,
                publish: None,
            })
        }
        SinkConfig::Ttn(t) => {
            let known = crate::sink::ttn::Known::default();
            let mut uplink = Uplink::new(
                name,
                &Ttn::settings(t),
                Ttn::new(t, known.clone()),
                ctx.outbox.clone(),
                sink_stats,
            )?;
            if let Some(router) = &ctx.router {
                let (tx, rx) = mpsc::channel(4096);
                tasks.push(tokio::spawn(crate::source::inject::run(
                    rx,
                    router.clone(),
                    ctx.outbox.clone(),
                    ctx.stats.clone(),
                )));
                if t.rpc {
                    tasks.push(tokio::spawn(crate::sink::ttn::rpc_bridge(
                        ctx.local.clone(),
                        ctx.topics.clone(),
                        t.downlink_topic.clone(),
                        known,
                        tx.clone(),
                        cancel.clone(),
                    )));
                }
                uplink = uplink.with_ingest(tx);
            }
            tasks.push(tokio::spawn(uplink.run(cancel.clone())));
            Ok(SinkHandle {
                cancel,
                tasks,
                publish: None,
            })
        }
        SinkConfig::Thethingsio(t) => {
            // Realtime updates go out on the local broker.
            let (commands_tx, commands) = mpsc::channel(256);
            let (replies_tx, replies) = mpsc::channel(1);
            tasks.push(tokio::spawn(downlink::run(
                ctx.local.clone(),
                None,
                std::time::Duration::from_secs(10),
                commands,
                replies_tx,
                cancel.clone(),
            )));
            // The token comes from the config, an earlier activation, or an
            // activation now; ingest runs meanwhile and records queue.
            let (name, t, ctx, stop) = (name.to_string(), t.clone(), ctx.clone(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                let Some(token) = thethingsio::thing_token(&name, &t, &ctx.state_dir, &stop).await
                else {
                    return;
                };
                let platform = Thethingsio::new(&name, &t, &token);
                match Uplink::new(
                    &name,
                    &Thethingsio::settings(&t),
                    platform,
                    ctx.outbox,
                    sink_stats,
                ) {
                    Ok(u) => u.with_downlink(commands_tx, replies).run(stop).await,
                    Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                }
            }));
            Ok(SinkHandle {
                cancel,
                tasks,
                publish: None,
            })
        }
        SinkConfig::Thingspeak(t) => {
            let uplink = Uplink::new(
                name,
                &Thingspeak::settings(t),
                Thingspeak::new(t),
                ctx.outbox.clone(),
                sink_stats,
            )?
            .with_rate_limit(Thingspeak::rate(t));
            tasks.push(tokio::spawn(uplink.run(cancel.clone())));
            Ok(SinkHandle {
                cancel,
                tasks,
                publish: None,
            })
        }
        SinkConfig::Thingsboard(t) => {
            let mut platform =
                Thingsboard::new(name, t, sink_stats.clone()).with_status(ctx.status.clone());
            if let Some(remote) = &ctx.remote {
                platform = platform.with_remote(remote.clone());
            }
            let (commands_tx, commands) = mpsc::channel(256);
            let (replies_tx, replies) = mpsc::channel(256);
            tasks.push(tokio::spawn(downlink::run(
                ctx.local.clone(),
                Some(downlink::filter_of(&t.rpc_response_topic)),
                t.rpc_timeout.0,
                commands,
                replies_tx.clone(),
                cancel.clone(),
            )));
            let base = Thingsboard::settings(t);
            if t.provision_device_key.is_none() {
                let platform = platform.with_identity(uplink::client_identity(name, &base));
                let uplink = Uplink::new(name, &base, platform, ctx.outbox.clone(), sink_stats)?
                    .with_downlink(commands_tx, replies)
                    .with_rate_limit(Thingsboard::initial_rate(t));
                tasks.push(tokio::spawn(uplink.run(cancel.clone())));
            } else {
                // Credentials come from provisioning (stored, or asked for
                // now); ingest runs meanwhile and records queue.
                let (name, t, ctx, stop) =
                    (name.to_string(), t.clone(), ctx.clone(), cancel.clone());
                tasks.push(tokio::spawn(async move {
                    let Some(creds) =
                        provision::credentials(&name, &t, &base, &ctx.state_dir, &stop).await
                    else {
                        return;
                    };
                    let settings = creds.apply(base);
                    let platform =
                        platform.with_identity(uplink::client_identity(&name, &settings));
                    match Uplink::new(&name, &settings, platform, ctx.outbox, sink_stats) {
                        Ok(u) => {
                            u.with_downlink(commands_tx, replies)
                                .with_rate_limit(Thingsboard::initial_rate(&t))
                                .run(stop)
                                .await
                        }
                        Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                    }
                }));
            }
            Ok(SinkHandle {
                cancel,
                tasks,
                publish: Some(replies_tx),
            })
        }
    }
}
