//! Remote configuration applied to the running daemon, and outpost's own
//! reports to ThingsBoard.
//!
//! A change (outpost's shared attributes, see `config::overlay`) is merged
//! onto the local file and checked exactly like the file. A valid change is
//! applied part by part, without restarting the process where the part
//! allows it:
//!
//! | part | how |
//! | --- | --- |
//! | `log_level` | the tracing filter is swapped |
//! | routes | the router's routes are swapped |
//! | store bounds | the outbox writer takes the new bounds |
//! | health interval | the next report uses it |
//! | serial ports | the serial tasks are restarted |
//! | a sink's settings | that sink alone is restarted |
//! | sinks added or removed | outpost restarts in place (the outbox needs a queue per sink) |
//!
//! A changed sink that does not connect within `remote.rollback_after` is
//! rolled back to the last working overlay. The overlay is kept in the state
//! directory, so it holds after a reboot while offline. Every outcome is
//! reported as client attributes: `config_version`, `config_hash`,
//! `config_status` (`ok`, `rejected`, `rolled_back`) and `config_error`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sinks::{self, SinkCtx, SinkHandle};
use crate::config::overlay::{self, Overlay};
use crate::config::{self, Config};
use crate::control::downlink::LocalBroker;
use crate::control::remote::{self, Event, Outcome};
use crate::route::Router;
use crate::sink::Publish;
use crate::source;

/// The parts of the running daemon a remote change can reach.
pub struct Live {
    pub base: toml::Table,
    pub config: Config,
    pub overlay: Overlay,
    /// The overlay to return to when a change breaks the uplink.
    pub last_good: Overlay,
    pub router: Option<Arc<Mutex<Router>>>,
    pub ctx: SinkCtx,
    pub sinks: BTreeMap<String, SinkHandle>,
    pub serial: (CancellationToken, JoinSet<()>),
    pub local: LocalBroker,
    pub shutdown: CancellationToken,
    /// Set when a change needs a restart in place.
    pub restart: Arc<std::sync::atomic::AtomicBool>,
    pub store_path: PathBuf,
    pub outcome: Outcome,
    /// The ThingsBoard sink remote configuration comes through (it keeps
    /// `ctx.remote` when restarted; other sinks do not get it).
    pub remote_sink: Option<String>,
}

impl Live {
    /// The sink that carries reports: the first ThingsBoard sink.
    fn reporter(&self) -> Option<(String, mpsc::Sender<Publish>)> {
        self.sinks
            .iter()
            .find_map(|(n, h)| h.publish.clone().map(|p| (n.clone(), p)))
    }

    fn connected(&self, sink: &str) -> bool {
        self.ctx
            .stats
            .sinks
            .get(sink)
            .is_some_and(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Publishes on outpost's own device, if the reporting sink is up.
    fn publish(&self, topic: &str, body: &Value) {
        let Some((name, tx)) = self.reporter() else {
            return;
        };
        if !self.connected(&name) {
            return;
        }
        let _ = tx.try_send(Publish {
            topic: topic.to_string(),
            payload: serde_json::to_vec(body).unwrap_or_default(),
            ids: Vec::new(),
        });
    }

    fn report(&self) {
        self.publish("v1/devices/me/attributes", &self.outcome.attributes());
    }

    /// Runs until shutdown: applies changes, reports, sends health.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut health = remote::Health::default();
        let mut next_health = Instant::now() + self.config.health.interval.0;
        // No ThingsBoard sink: nothing arrives, and the loop only waits for
        // shutdown (the sinks it owns keep running).
        let mut open = true;
        loop {
            tokio::select! {
                ev = events.recv(), if open => match ev {
                    None => open = false,
                    Some(Event::Connected) => {
                        // The session is being set up; report once it is.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut attrs = remote::system_attributes();
                        if let (Value::Object(a), Value::Object(o)) = (&mut attrs, self.outcome.attributes()) {
                            a.extend(o);
                        }
                        self.publish("v1/devices/me/attributes", &attrs);
                    }
                    Some(Event::Shared(shared)) => {
                        if self.config.remote.enabled {
                            self.change(&shared).await;
                        } else {
                            tracing::info!("remote configuration is disabled (remote.enabled = false); ignoring shared attributes");
                        }
                        if self.restart.load(std::sync::atomic::Ordering::SeqCst) {
                            self.shutdown.cancel();
                        }
                        next_health = next_health.min(Instant::now() + self.config.health.interval.0);
                    }
                },
                _ = tokio::time::sleep_until(next_health) => {
                    next_health = Instant::now() + self.config.health.interval.0;
                    let values = health.values(&self.ctx.status, &self.config.state_dir, &self.store_path).await;
                    let body = serde_json::json!({"ts": crate::route::now_ms(), "values": values});
                    self.publish("v1/devices/me/telemetry", &body);
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.serial.0.cancel();
        while self.serial.1.join_next().await.is_some() {}
        for (_, h) in std::mem::take(&mut self.sinks) {
            h.stop().await;
        }
    }

    /// One remote change: check, apply, persist, report.
    async fn change(&mut self, shared: &Map<String, Value>) {
        // A version alone changes nothing (and is what a broker that echoes
        // our own client attributes sends back).
        if shared.keys().all(|k| k == "config_version") {
            return;
        }
        let next = match self.overlay.with_changes(shared) {
            Ok(o) => o,
            Err(e) => return self.reject(shared, e),
        };
        if next == self.overlay {
            return;
        }
        let checked = next.merge(&self.base).and_then(|t| {
            config::parse_table(&t, "remote configuration").map_err(|e| e.to_string())
        });
        let config = match checked {
            Ok(c) => c,
            Err(e) => return self.reject(shared, e),
        };
        let previous = std::mem::replace(&mut self.overlay, next);
        let changed_sinks = self.apply(config).await;
        if let Err(e) = self.overlay.save(&self.config.state_dir) {
            tracing::error!(error = %e, "cannot keep the remote configuration; it holds until restart");
        }
        self.outcome = self.outcome_of("ok", None);
        tracing::info!(version = ?self.overlay.version, hash = %self.outcome.hash,
            sections = ?self.overlay.sources(), "remote configuration applied");
        if changed_sinks.is_empty() || self.restart.load(std::sync::atomic::Ordering::SeqCst) {
            self.last_good = self.overlay.clone();
            self.report();
            return;
        }
        // A changed sink must connect, or the change is undone.
        match self.wait_connected(&changed_sinks).await {
            Ok(()) => {
                self.last_good = self.overlay.clone();
                self.report();
            }
            Err(e) => {
                tracing::error!(error = %e, "remote configuration broke the uplink; rolling back");
                let good = self.last_good.clone();
                let _ = previous;
                let config = good
                    .merge(&self.base)
                    .ok()
                    .and_then(|t| config::parse_table(&t, "last working configuration").ok());
                let failed_version = self.overlay.version.clone();
                self.overlay = good;
                if let Some(c) = config {
                    self.apply(c).await;
                }
                if let Err(e) = self.overlay.save(&self.config.state_dir) {
                    tracing::error!(error = %e, "cannot keep the rolled-back configuration");
                }
                let mut outcome = self.outcome_of("rolled_back", Some(e));
                outcome.version = failed_version;
                self.outcome = outcome;
                // Reported once the restored sink connects (Event::Connected)
                // and right away if it already has.
                self.report();
            }
        }
    }

    fn reject(&mut self, shared: &Map<String, Value>, error: String) {
        tracing::warn!(error = %error, "remote configuration rejected; the running configuration stays");
        let mut outcome = self.outcome_of("rejected", Some(error));
        if let Some(v) = shared.get("config_version") {
            outcome.version = Some(v.clone());
        }
        self.outcome = outcome;
        self.report();
    }

    fn outcome_of(&self, status: &'static str, error: Option<String>) -> Outcome {
        Outcome {
            version: self.overlay.version.clone().filter(|v| !v.is_null()),
            hash: overlay::hash(&serde_json::to_value(&self.overlay.sections).unwrap_or_default()),
            status,
            error,
        }
    }

    async fn wait_connected(&self, sinks: &[(String, u64)]) -> Result<(), String> {
        let within = self.config.remote.rollback_after.0;
        let until = Instant::now() + within;
        loop {
            let pending: Vec<&str> = sinks
                .iter()
                .filter(|(name, before)| {
                    !self.ctx.stats.sinks.get(name).is_some_and(|s| {
                        crate::stats::get(&s.connects) > *before
                            && s.connected.load(std::sync::atomic::Ordering::Relaxed)
                    })
                })
                .map(|(n, _)| n.as_str())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "sink {} did not connect within {}s with the new settings",
                    pending.join(", "),
                    within.as_secs()
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Applies `next` part by part; returns the restarted sinks with their
    /// connect count before the restart.
    async fn apply(&mut self, next: Config) -> Vec<(String, u64)> {
        let cur = std::mem::replace(&mut self.config, next);
        let next = &self.config;
        if next.log_level != cur.log_level {
            if let Err(e) = super::logging::set_level(&next.log_level) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
        }
        if format!("{:?}", next.routes) != format!("{:?}", cur.routes) {
            if let Some(router) = &self.router {
                let mut r = router.lock().unwrap_or_else(|p| p.into_inner());
                match r.reconfigure(&next.routes) {
                    Ok(()) => tracing::info!(routes = next.routes.len(), "routes changed"),
                    Err(e) => tracing::error!(error = %e, "cannot change the routes"),
                }
            }
        }
        if format!("{:?}", next.store) != format!("{:?}", cur.store) {
            let same_file = next.store.path == cur.store.path
                && next.store.synchronous == cur.store.synchronous;
            if same_file {
                if let Err(e) = self.ctx.outbox.set_limits(&next.store).await {
                    tracing::error!(error = %e, "cannot change the outbox bounds");
                }
            } else {
                self.restart_in_place("store.path or store.synchronous changed");
            }
        }
        if format!("{:?}", next.serial) != format!("{:?}", cur.serial) {
            self.serial.0.cancel();
            while self.serial.1.join_next().await.is_some() {}
            self.serial.0 = self.shutdown.child_token();
            if let Some(router) = &self.router {
                source::serial::spawn(
                    &next.serial,
                    source::serial::Pipeline {
                        router: router.clone(),
                        outbox: self.ctx.outbox.clone(),
                        stats: self.ctx.stats.clone(),
                    },
                    self.local.clone(),
                    super::serial_topics(next),
                    &mut self.serial.1,
                    &self.serial.0,
                );
            }
            tracing::info!(ports = next.serial.len(), "serial ports restarted");
        }
        let mut restarted = Vec::new();
        let names: Vec<&String> = next.sinks.keys().collect();
        if names != cur.sinks.keys().collect::<Vec<_>>() {
            self.restart_in_place("sinks were added or removed");
            return restarted;
        }
        for (name, sink) in &self.config.sinks {
            if cur.sinks.get(name).map(|c| format!("{c:?}")) == Some(format!("{sink:?}")) {
                continue;
            }
            let before = self
                .ctx
                .stats
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

    fn restart_in_place(&self, why: &str) {
        tracing::info!(why, "remote configuration needs a restart in place");
        self.restart
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
