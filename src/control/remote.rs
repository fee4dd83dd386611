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
//! | `[readings]` | the router takes the new bound |
//! | store bounds | the outbox writer takes the new bounds |
//! | health interval | the next report uses it |
//! | serial ports | the serial tasks are restarted |
//! | a sink's settings | that sink alone is restarted |
//! | sinks added or removed | started or stopped alone (their queues stay in the outbox); the local broker never restarts |
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
use crate::config::overlay::Overlay;
use crate::config::{self, guard, stored, Config};
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
    /// The file's config alone: what a change is checked against.
    pub file: Config,
    pub config: Config,
    pub overlay: Overlay,
    /// The overlay to return to when a change breaks the uplink.
    pub last_good: Overlay,
    /// This start runs a change being tried (see `config::stored`): it is
    /// confirmed once every sink connected and stayed connected for
    /// `remote.rollback_after`, else set aside.
    pub trying: bool,
    pub status: StatusSource,
    pub store_path: PathBuf,
    pub shutdown: CancellationToken,
    /// Set when a change needs a restart in place.
    pub restart: Arc<AtomicBool>,
    pub outcome: Outcome,
}

/// A change applied and not yet confirmed: the sinks it restarted (with
/// their connect count before) must be connected at `deadline`.
struct Trial {
    deadline: Instant,
    sinks: Vec<(String, u64)>,
    /// The change came with this start (it needed a restart).
    at_start: bool,
}

impl<A: Applier> Manager<A> {
    /// Runs until shutdown: applies changes, reports, sends health.
    pub async fn run(mut self, mut events: mpsc::Receiver<ControlEvent>) {
        let mut health = Health::default();
        let mut next_health = later(self.config.health.interval.0);
        let mut trial = self.trying.then(|| Trial {
            deadline: later(self.config.remote.rollback_after.0),
            sinks: self.touched_sinks(),
            at_start: true,
        });
        // No ThingsBoard sink: nothing arrives, and the loop only waits for
        // shutdown (the sinks the applier owns keep running).
        let mut open = true;
        loop {
            let trial_due = trial.as_ref().map(|t| t.deadline);
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
                            if let Some(t) = self.change(&shared).await {
                                // A change on top of one still on trial:
                                // both are tried together.
                                let mut t = t;
                                if let Some(old) = trial.take() {
                                    t.sinks.extend(old.sinks);
                                    t.at_start |= old.at_start;
                                }
                                trial = Some(t);
                            }
                        } else {
                            tracing::info!("remote configuration is disabled (remote.enabled = false); ignoring shared attributes");
                        }
                        if self.restart.load(Ordering::SeqCst) {
                            self.shutdown.cancel();
                        }
                        next_health = next_health.min(later(self.config.health.interval.0));
                    }
                },
                _ = tokio::time::sleep_until(trial_due.unwrap_or(next_health)), if trial_due.is_some() => {
                    if let Some(t) = trial.take() {
                        self.settle(t).await;
                    }
                    if self.restart.load(Ordering::SeqCst) {
                        self.shutdown.cancel();
                    }
                }
                _ = tokio::time::sleep_until(next_health) => {
                    next_health = later(self.config.health.interval.0);
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

    /// The file with `o` merged in, checked like the file and against what
    /// a remote change may not do.
    fn check(&self, o: &Overlay) -> Result<Config, String> {
        let table = o.merge(&self.base)?;
        let c = config::parse_table(&table, "remote configuration").map_err(|e| e.to_string())?;
        guard::remote_change(&self.file, &self.config, &c, &o.sources())?;
        // Only what the change brings: a part already broken in the running
        // config (a sink's CA file gone) does not block every other change.
        let known: Vec<String> = super::preflight::check(&self.config)
            .iter()
            .map(ToString::to_string)
            .collect();
        let new: Vec<String> = super::preflight::check(&c)
            .iter()
            .map(ToString::to_string)
            .filter(|p| !known.contains(p))
            .collect();
        if !new.is_empty() {
            return Err(new.join("; "));
        }
        Ok(c)
    }

    /// One remote change: check, keep as being tried, apply. Returns the
    /// trial it is on when it restarted sinks; with nothing to wait for it
    /// is confirmed at once.
    async fn change(&mut self, shared: &Map<String, Value>) -> Option<Trial> {
        // A version alone changes nothing (and is what a broker that echoes
        // our own client attributes sends back).
        if shared.keys().all(|k| k == "config_version") {
            return None;
        }
        let next = match self.overlay.with_changes(shared) {
            Ok(o) => o,
            Err(e) => {
                self.reject(shared, e);
                return None;
            }
        };
        if next == self.overlay {
            return None;
        }
        // A change rolled back before is not tried again until the
        // operator sends something different; each offer is answered.
        if let Some(failed) = stored::load_failed(&self.config.state_dir) {
            if failed.overlay.sections == next.sections {
                tracing::warn!(error = %failed.error,
                    "the remote configuration offered again was rolled back before; not applying it again until a different value is sent");
                let mut outcome = Outcome::of(&failed.overlay, "rolled_back", Some(failed.error));
                if let Some(v) = shared.get("config_version") {
                    outcome.version = Some(v.clone());
                }
                self.outcome = outcome;
                self.report_outcome();
                return None;
            }
        }
        let config = match self.check(&next) {
            Ok(c) => c,
            Err(e) => {
                self.reject(shared, e);
                return None;
            }
        };
        // Kept as being tried before it runs: if outpost dies with it, the
        // next start sets it aside instead of running it again.
        if let Err(e) = stored::save_trying(&self.config.state_dir, &next, false) {
            self.reject(shared, format!("cannot keep the change to try it: {e}"));
            return None;
        }
        self.overlay = next;
        let applied = self.switch_to(config).await;
        tracing::info!(version = ?self.overlay.version, sections = ?self.overlay.sources(),
            "remote configuration applied; on trial");
        if self.restart.load(Ordering::SeqCst) {
            // The next start tries it (and confirms or sets it aside).
            return None;
        }
        if applied.restarted.is_empty() {
            self.confirm();
            return None;
        }
        Some(Trial {
            deadline: later(self.config.remote.rollback_after.0),
            sinks: applied.restarted,
            at_start: false,
        })
    }

    /// The sinks a change being tried at start touched (added, or with
    /// settings other than the last good configuration's): only those are
    /// judged, never a sink that was already down.
    fn touched_sinks(&self) -> Vec<(String, u64)> {
        let good = self.check(&self.last_good).ok();
        self.config
            .sinks
            .iter()
            .filter(|(name, sink)| {
                good.as_ref()
                    .and_then(|g| g.sinks.get(*name))
                    .map(|g| format!("{g:?}"))
                    != Some(format!("{sink:?}"))
            })
            .map(|(name, _)| (name.clone(), 0))
            .collect()
    }

    /// The trial's time is up: confirmed if every sink it restarted is
    /// connected (and connected since the change), else rolled back.
    async fn settle(&mut self, trial: Trial) {
        let within = self.config.remote.rollback_after.0.as_secs();
        let failing: Vec<&str> = trial
            .sinks
            .iter()
            .filter(|(name, before)| {
                *before == u64::MAX || !self.applier.connected_since(name, *before)
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if failing.is_empty() {
            return self.confirm();
        }
        let error = format!(
            "sink {} did not connect within {within}s with the new settings, or did not stay connected",
            failing.join(", ")
        );
        tracing::error!(error = %error, "remote configuration broke the uplink; rolling back");
        if let Err(e) = stored::set_aside(&self.config.state_dir, &self.overlay, &error) {
            tracing::warn!(error = %e, "cannot record the change set aside");
        }
        let failed_version = self.overlay.version.clone();
        if trial.at_start {
            // It came with this start: the next one runs the last good
            // configuration (and reports the roll-back).
            self.restart.store(true, Ordering::SeqCst);
            return;
        }
        let good = self.last_good.clone();
        let config = self.check(&good).ok();
        self.overlay = good;
        if let Some(c) = config {
            self.switch_to(c).await;
        }
        let mut outcome = self.outcome_of("rolled_back", Some(error));
        outcome.version = failed_version;
        self.outcome = outcome;
        // Reported once the restored sink connects (Connected) and right
        // away if it already has.
        self.report_outcome();
    }

    /// The running overlay holds: it is the last good one from now on.
    fn confirm(&mut self) {
        if let Err(e) = stored::promote(&self.config.state_dir, &self.overlay) {
            tracing::error!(error = %e, "cannot keep the remote configuration; it holds until restart");
        }
        self.last_good = self.overlay.clone();
        self.outcome = self.outcome_of("ok", None);
        tracing::info!(version = ?self.overlay.version, hash = %self.outcome.hash, "remote configuration confirmed");
        self.report_outcome();
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

    /// The outcome of the running overlay.
    pub fn outcome_of(&self, status: &'static str, error: Option<String>) -> Outcome {
        Outcome::of(&self.overlay, status, error)
    }
}

/// `d` from now, or an hour if that cannot be told.
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}
