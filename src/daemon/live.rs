//! The running daemon as the remote configuration sees it: the parts a
//! change can reach (log filter, routes, outbox bounds, serial ports,
//! sinks, added and removed too) and the sink that carries outpost's
//! reports. None of it touches the local broker. The decisions
//! (check, persist, roll back) are `control::remote`'s.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sinks::{self, SinkCtx, SinkHandle};
use crate::config::Config;
use crate::control::remote::{Applied, Applier};
use crate::sink::{Report, Upstream};
use crate::source;

pub struct Live {
    pub ctx: SinkCtx,
    pub sinks: BTreeMap<String, SinkHandle>,
    pub serial: (CancellationToken, JoinSet<()>),
    pub shutdown: CancellationToken,
    /// The ThingsBoard sink remote configuration comes through (it keeps
    /// `ctx.remote` when restarted; other sinks do not get it).
    pub remote_sink: Option<String>,
}

impl Live {
    /// The sink that carries reports: the first ThingsBoard sink.
    fn reporter(&self) -> Option<(&String, &SinkHandle)> {
        self.sinks.iter().find(|(_, h)| h.upstream.is_some())
    }

    fn is_connected(&self, sink: &str) -> bool {
        self.ctx
            .ingest
            .stats()
            .sinks
            .get(sink)
            .is_some_and(|s| s.connected.load(Ordering::Relaxed))
    }

    /// Starts the serial ports of `cfg` (after stopping the running ones).
    async fn restart_serial(&mut self, cfg: &Config) {
        self.serial.0.cancel();
        while self.serial.1.join_next().await.is_some() {}
        self.serial.0 = self.shutdown.child_token();
        source::serial::spawn(
            &cfg.serial,
            self.ctx.ingest.clone(),
            self.ctx.local.clone(),
            cfg.device_topics(),
            &mut self.serial.1,
            &self.serial.0,
        );
        tracing::info!(ports = cfg.serial.len(), "serial ports restarted");
    }

    /// Restarts the sinks whose settings changed.
    async fn restart_sinks(&mut self, cur: &Config, next: &Config) -> Vec<(String, u64)> {
        let mut restarted = Vec::new();
        for (name, sink) in &next.sinks {
            if cur.sinks.get(name).map(|c| format!("{c:?}")) == Some(format!("{sink:?}")) {
                continue;
            }
            let before = self
                .ctx
                .ingest
                .stats()
                .sinks
                .get(name)
                .map(|s| crate::stats::get(&s.connects))
                .unwrap_or(0);
            if let Some(h) = self.sinks.remove(name) {
                h.stop().await;
            }
            let mut ctx = self.ctx.clone();
            if self.remote_sink.as_ref() != Some(name) {
                ctx.remote = None;
            }
            match sinks::spawn(&ctx, name, sink, &self.shutdown) {
                Ok(h) => {
                    tracing::info!(sink = %name, "sink restarted with new settings");
                    self.sinks.insert(name.clone(), h);
                    restarted.push((name.clone(), before));
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot start the sink with the new settings");
                    restarted.push((name.clone(), u64::MAX));
                }
            }
        }
        restarted
    }
}

impl Applier for Live {
    async fn apply(&mut self, cur: &Config, next: &Config) -> Applied {
        let mut applied = Applied::default();
        if next.log_level != cur.log_level {
            if let Err(e) = super::logging::set_level(&next.log_level) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
        }
        let routes_changed = format!("{:?}", next.routes) != format!("{:?}", cur.routes);
        if routes_changed || next.readings != cur.readings {
            let mut r = self
                .ctx
                .ingest
                .router()
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if routes_changed {
                match r.reconfigure(&next.routes) {
                    Ok(()) => tracing::info!(routes = next.routes.len(), "routes changed"),
                    Err(e) => tracing::error!(error = %e, "cannot change the routes"),
                }
            }
            r.set_readings(&next.readings);
        }
        if format!("{:?}", next.store) != format!("{:?}", cur.store) {
            let same_file = next.store.path == cur.store.path;
            if same_file {
                if let Err(e) = self.ctx.ingest.outbox().set_limits(&next.store).await {
                    tracing::error!(error = %e, "cannot change the outbox bounds");
                }
            } else {
                applied.restart = Some("store.path changed (the outbox moves to another file)");
            }
        }
        if format!("{:?}", next.serial) != format!("{:?}", cur.serial) {
            self.restart_serial(next).await;
        }
        // Sinks come and go while the broker and the other sinks run on;
        // only losing the sink that carries the remote configuration takes
        // a restart (the next start finds the one to use).
        if self
            .remote_sink
            .as_ref()
            .is_some_and(|r| !next.sinks.contains_key(r))
        {
            applied.restart = Some("the sink that carries the remote configuration was removed");
            return applied;
        }
        for name in cur.sinks.keys().filter(|n| !next.sinks.contains_key(*n)) {
            if let Some(h) = self.sinks.remove(name) {
                h.stop().await;
            }
            self.ctx.ingest.outbox().remove_sink(name);
            self.ctx.ingest.stats().sinks.remove(name);
            tracing::info!(sink = %name, "sink removed; its queue stays in the outbox");
        }
        for name in next.sinks.keys().filter(|n| !cur.sinks.contains_key(*n)) {
            self.ctx.ingest.outbox().add_sink(name);
            tracing::info!(sink = %name, "sink added");
        }
        applied.restarted = self.restart_sinks(cur, next).await;
        applied
    }

    fn connected_since(&self, name: &str, before: u64) -> bool {
        self.ctx.ingest.stats().sinks.get(name).is_some_and(|s| {
            crate::stats::get(&s.connects) > before && s.connected.load(Ordering::Relaxed)
        })
    }

    fn report(&self, report: Report) {
        let Some((name, handle)) = self.reporter() else {
            return;
        };
        if !self.is_connected(name) {
            return;
        }
        if let Some(tx) = &handle.upstream {
            let _ = tx.try_send(Upstream::Report(report));
        }
    }

    async fn stop(&mut self) {
        self.serial.0.cancel();
        while self.serial.1.join_next().await.is_some() {}
        for (_, h) in std::mem::take(&mut self.sinks) {
            h.stop().await;
        }
    }
}
