//! Starting (and restarting) one sink: its uplink session and, for the
//! platforms with a downlink, its client on the local broker. Each sink runs
//! under its own cancellation token, a child of the daemon's, so a remote
//! configuration change can restart one sink and leave the rest running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::config::SinkConfig;
use crate::control::downlink;
use crate::sink::mqtt::MqttEncoder;
use crate::sink::session::{self, SessionIo, Uplink};
use crate::sink::thethingsio::{self, Thethingsio};
use crate::sink::thingsboard::{self, provision, Thingsboard};
use crate::sink::thingspeak::Thingspeak;
use crate::sink::ttn::{self, Ttn};
use crate::sink::{Agent, ControlEvent, Upstream};
use crate::source::broker::Broker;
use crate::source::Ingest;
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
    let outbox = ctx.ingest.outbox().clone();
    let sink_stats = ctx
        .ingest
        .stats()
        .sinks
        .get(name)
        .cloned()
        .unwrap_or_default();
    let mut handle = SinkHandle {
        cancel: cancel.clone(),
        tasks: Vec::new(),
        upstream: None,
    };
    match sink {
        SinkConfig::Mqtt(m) => {
            let settings = MqttEncoder::settings(m);
            session::client_identity(name, &settings);
            let uplink = Uplink::new(name, &settings, MqttEncoder::new(m), outbox, sink_stats)?;
            handle.tasks.push(tokio::spawn(uplink.run(cancel)));
        }
        SinkConfig::Ttn(t) => {
            let known = ttn::Known::default();
            let uplink = Uplink::new(
                name,
                &Ttn::settings(t),
                Ttn::new(t, known.clone()),
                outbox,
                sink_stats,
            )?
            .with_io(SessionIo {
                ingest: Some(ctx.ingest.clone()),
                ..SessionIo::default()
            });
            if t.rpc {
                handle.tasks.push(tokio::spawn(ttn::rpc_bridge(
                    ctx.local.clone(),
                    ctx.topics.clone(),
                    t.downlink_topic.clone(),
                    known,
                    ctx.ingest.clone(),
                    cancel.clone(),
                )));
            }
            handle.tasks.push(tokio::spawn(uplink.run(cancel)));
        }
        SinkConfig::Thethingsio(t) => {
            // Realtime updates go out on the local broker.
            let (local_tx, local_rx) = mpsc::channel(256);
            let (replies_tx, replies) = mpsc::channel(1);
            handle.tasks.push(tokio::spawn(downlink::run(
                ctx.local.clone(),
                None,
                Duration::from_secs(10),
                local_rx,
                replies_tx,
                cancel.clone(),
            )));
            // The token comes from the config, an earlier activation, or an
            // activation now; ingest runs meanwhile and records queue.
            let (name, t, state_dir) = (name.to_string(), t.clone(), ctx.state_dir.clone());
            handle.tasks.push(tokio::spawn(async move {
                let Some(token) = thethingsio::thing_token(&name, &t, &state_dir, &cancel).await
                else {
                    return;
                };
                let platform = Thethingsio::new(&name, &t, &token);
                let io = SessionIo {
                    local: Some(local_tx),
                    upstream: Some(replies),
                    ..SessionIo::default()
                };
                match Uplink::new(
                    &name,
                    &Thethingsio::settings(&t),
                    platform,
                    outbox,
                    sink_stats,
                ) {
                    Ok(u) => u.with_io(io).run(cancel).await,
                    Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                }
            }));
        }
        SinkConfig::Thingspeak(t) => {
            let uplink = Uplink::new(
                name,
                &Thingspeak::settings(t),
                Thingspeak::new(t),
                outbox,
                sink_stats,
            )?
            .with_rate_limit(&Thingspeak::rate(t));
            handle.tasks.push(tokio::spawn(uplink.run(cancel)));
        }
        SinkConfig::Thingsboard(t) => {
            let platform =
                Thingsboard::new(name, t, sink_stats.clone()).with_remote(ctx.remote.is_some());
            let (local_tx, local_rx) = mpsc::channel(256);
            let (upstream_tx, upstream_rx) = mpsc::channel(256);
            handle.tasks.push(tokio::spawn(downlink::run(
                ctx.local.clone(),
                Some(filter_of(&t.rpc_response_topic)),
                t.rpc_timeout.0,
                local_rx,
                upstream_tx.clone(),
                cancel.clone(),
            )));
            handle.upstream = Some(upstream_tx);
            let io = SessionIo {
                local: Some(local_tx),
                upstream: Some(upstream_rx),
                ingest: None,
                agent: Some(ctx.agent.clone()),
                control: ctx.remote.clone(),
            };
            let base = Thingsboard::settings(t);
            if t.provision_device_key.is_none() {
                let platform = platform.with_identity(session::client_identity(name, &base));
                let uplink = Uplink::new(name, &base, platform, outbox, sink_stats)?
                    .with_io(io)
                    .with_rate_limit(&thingsboard::initial_rate(t));
                handle.tasks.push(tokio::spawn(uplink.run(cancel)));
            } else {
                // Credentials come from provisioning (stored, or asked for
                // now); ingest runs meanwhile and records queue.
                let (name, t, state_dir) = (name.to_string(), t.clone(), ctx.state_dir.clone());
                handle.tasks.push(tokio::spawn(async move {
                    let Some(creds) =
                        provision::credentials(&name, &t, &base, &state_dir, &cancel).await
                    else {
                        return;
                    };
                    let settings = creds.apply(base);
                    let platform =
                        platform.with_identity(session::client_identity(&name, &settings));
                    match Uplink::new(&name, &settings, platform, outbox, sink_stats) {
                        Ok(u) => {
                            u.with_io(io)
                                .with_rate_limit(&thingsboard::initial_rate(&t))
                                .run(cancel)
                                .await
                        }
                        Err(e) => tracing::error!(sink = %name, error = %e, "sink not started"),
                    }
                }));
            }
        }
    }
    Ok(handle)
}
