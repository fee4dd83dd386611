//! Signals. SIGTERM (systemd stop) and SIGINT (Ctrl-C): stop gracefully.
//! SIGHUP: check the config file again. If it is unchanged, read the local
//! broker's password and ACL files again, in place, as Mosquitto does:
//! connected clients stay, new logins and every later message follow the
//! new files. If it changed and is valid, stop gracefully and ask for a
//! restart in place (the caller re-executes outpost, same PID, so systemd
//! and scripts see one process); every reading is in the outbox, so nothing
//! is lost across it and LAN clients reconnect. An invalid file, or a
//! password or ACL file with a problem, is rejected with every problem
//! logged, and the running config stays.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Set when a SIGHUP asked for a restart with a valid new config.
#[derive(Clone, Default)]
pub struct ReloadRequest(Arc<AtomicBool>);

impl ReloadRequest {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A reload that changes nothing: said once as an ERROR, and shown by
/// status, the page and health telemetry until a good file is loaded.
fn refuse(why: &str) {
    tracing::error!(
        signal = "SIGHUP",
        "config rejected, keeping the running one: {why}"
    );
    crate::control::status::set_reload_refused(Some(why.to_string()));
}

/// `running`: the file config in force (as its debug text), to tell a
/// changed file from an unchanged one; `broker`: the local broker, once it
/// runs.
pub fn spawn(
    shutdown: CancellationToken,
    config_path: Option<PathBuf>,
    running: String,
    broker: Arc<OnceLock<crate::source::broker::Broker>>,
) -> std::io::Result<ReloadRequest> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let reload = ReloadRequest::default();
    let flag = reload.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(signal = "SIGTERM", "stop requested");
                    super::supervisor::stopping();
                    break;
                }
                _ = int.recv() => {
                    tracing::info!(signal = "SIGINT", "stop requested");
                    super::supervisor::stopping();
                    break;
                }
                _ = hup.recv() => {
                    match crate::config::load_full(config_path.as_deref()) {
                        Ok(l) if format!("{:?}", l.file) == running => {
                            // The file is the running one again.
                            crate::control::status::set_reload_refused(None);
                            match broker.get().map(|b| b.reload_access()) {
                                Some(Ok(what)) => tracing::info!(signal = "SIGHUP", access = %what, "config unchanged: the broker's password and ACL files are read again"),
                                Some(Err(e)) => tracing::error!(signal = "SIGHUP", error = %e, "the broker's password or ACL file has a problem; the running rules stay"),
                                None => tracing::warn!(signal = "SIGHUP", "the broker is not running yet; nothing to reload"),
                            }
                        }
                        Ok(l) => {
                            let problems = crate::control::preflight::check(&l.config);
                            if problems.is_empty() {
                                tracing::info!(signal = "SIGHUP", config = %l.source, "config is valid: restarting in place to apply it");
                                crate::control::status::set_reload_refused(None);
                                flag.0.store(true, Ordering::SeqCst);
                                break;
                            }
                            let e = crate::config::ConfigError::Invalid {
                                origin: l.source.to_string(),
                                problems,
                            };
                            refuse(&e.to_string());
                        }
                        Err(e) => refuse(&e.to_string()),
                    }
                }
            }
        }
        shutdown.cancel();
    });
    Ok(reload)
}
