//! Remote configuration: outpost's shared attributes on ThingsBoard (see
//! `config::overlay`) change the running daemon.
//!
//! A change is merged onto the local file and checked exactly like the
//! file. A valid change is applied part by part by the daemon (an
//! [`Applier`]), without restarting the process where the part allows it:
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
//! `config_status` (`ok`, `rejected`, `rolled_back`) and `config_error`;
//! health telemetry goes out every `health.interval`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::{self, Health, Outcome};
use super::status::StatusSource;
use crate::config::overlay::{self, Overlay};
use crate::config::{self, Config};
use crate::sink::{ControlEvent, Report};

/// What applying a change did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Sinks restarted with new settings, with their connect count before
    /// (`u64::MAX`: it could not be started at all).
    pub restarted: Vec<(String, u64)>,
    /// The change needs a restart of the process (why).
    pub restart: Option<&'static str>,
}

/// The running daemon's side of a change: the parts it can reach.
pub trait Applier: Send {
    /// Applies `next` on top of the running `cur`.
    fn apply(&mut self, cur: &Config, next: &Config) -> impl Future<Output = Applied> + Send;
    /// Has sink `name` connected (and is it connected) since its connect
    /// count was `before`?
    fn connected_since(&self, name: &str, before: u64) -> bool;
    /// Sends a report on outpost's own device, if the reporting sink is up.
    fn report(&self, report: Report);
    /// Stops the parts the applier owns (sinks, serial ports).
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// Applies remote changes and sends reports, until shutdown.
pub struct Manager<A: Applier> {
    pub applier: A,
    pub base: toml::Table,
    pub config: Config,
    pub overlay: Overlay,
    /// The overlay to return to when a change breaks the uplink.
    pub last_good: Overlay,
    pub status: StatusSource,
    pub store_path: PathBuf,
    pub shutdown: CancellationToken,
    /// Set when a change needs a restart in place.
    pub restart: Arc<AtomicBool>,
    pub outcome: Outcome,
}

impl<A: Applier> Manager<A> {
    /// Runs until shutdown: applies changes, reports, sends health.
    pub async fn run(mut self, mut events: mpsc::Receiver<ControlEvent>) {
        let mut health = Health::default();
        let mut next_health = Instant::now() + self.config.health.interval.0;
        // No ThingsBoard sink: nothing arrives, and the loop only waits for
        // shutdown (the sinks the applier owns keep running).
        let mut open = true;
        loop {
            tokio::select! {
                ev = events.recv(), if open => match ev {
                    None => open = false,
                    Some(ControlEvent::Connected) => {
                        // The session is being set up; report once it is.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut attrs = report::system_attributes();
                        attrs.extend(self.outcome.attributes());
                        self.applier.report(Report::Attributes(attrs));
                    }
                    Some(ControlEvent::Shared(shared)) => {
                        if self.config.remote.enabled {
                            self.change(&shared).await;
                        } else {
                            tracing::info!("remote configuration is disabled (remote.enabled = false); ignoring shared attributes");
                        }
                        if self.restart.load(Ordering::SeqCst) {
                            self.shutdown.cancel();
                        }
                        next_health = next_health.min(Instant::now() + self.config.health.interval.0);
                    }
                },
                _ = tokio::time::sleep_until(next_health) => {
                    next_health = Instant::now() + self.config.health.interval.0;
                    let values = health.values(&self.status, &self.config.state_dir, &self.store_path).await;
                    self.applier.report(Report::Telemetry { ts: crate::record::now_ms(), values });
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
        self.applier.stop().await;
    }

    fn report_outcome(&self) {
        self.applier
            .report(Report::Attributes(self.outcome.attributes()));
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
        self.overlay = next;
        let applied = self.switch_to(config).await;
        if let Err(e) = self.overlay.save(&self.config.state_dir) {
            tracing::error!(error = %e, "cannot keep the remote configuration; it holds until restart");
        }
        self.outcome = self.outcome_of("ok", None);
        tracing::info!(version = ?self.overlay.version, hash = %self.outcome.hash,
            sections = ?self.overlay.sources(), "remote configuration applied");
        if applied.restarted.is_empty() || self.restart.load(Ordering::SeqCst) {
            self.last_good = self.overlay.clone();
            self.report_outcome();
            return;
        }
        // A changed sink must connect, or the change is undone.
        match self.wait_connected(&applied.restarted).await {
            Ok(()) => {
                self.last_good = self.overlay.clone();
                self.report_outcome();
            }
            Err(e) => {
                tracing::error!(error = %e, "remote configuration broke the uplink; rolling back");
                let good = self.last_good.clone();
                let config = good
                    .merge(&self.base)
                    .ok()
                    .and_then(|t| config::parse_table(&t, "last working configuration").ok());
                let failed_version = self.overlay.version.clone();
                self.overlay = good;
                if let Some(c) = config {
                    self.switch_to(c).await;
                }
                if let Err(e) = self.overlay.save(&self.config.state_dir) {
                    tracing::error!(error = %e, "cannot keep the rolled-back configuration");
                }
                let mut outcome = self.outcome_of("rolled_back", Some(e));
                outcome.version = failed_version;
                self.outcome = outcome;
                // Reported once the restored sink connects (Connected) and
                // right away if it already has.
                self.report_outcome();
            }
        }
    }

    /// Applies `next` and makes it the running config.
    async fn switch_to(&mut self, next: Config) -> Applied {
        let applied = self.applier.apply(&self.config, &next).await;
        self.config = next;
        if let Some(why) = applied.restart {
            tracing::info!(why, "remote configuration needs a restart in place");
            self.restart.store(true, Ordering::SeqCst);
        }
        applied
    }

    fn reject(&mut self, shared: &Map<String, Value>, error: String) {
        tracing::warn!(error = %error, "remote configuration rejected; the running configuration stays");
        let mut outcome = self.outcome_of("rejected", Some(error));
        if let Some(v) = shared.get("config_version") {
            outcome.version = Some(v.clone());
        }
        self.outcome = outcome;
        self.report_outcome();
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
                .filter(|(name, before)| !self.applier.connected_since(name, *before))
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
}
