//! Signals. SIGTERM (systemd stop) and SIGINT (Ctrl-C): stop gracefully.
//! SIGHUP: check the config file again; if it is valid, stop gracefully and
//! ask for a restart in place (the caller re-executes outpost, same PID, so
//! systemd and scripts see one process). Every reading is in the outbox, so
//! nothing is lost across it; LAN clients reconnect. An invalid file is
//! rejected with every problem logged, and the running config stays.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

pub fn spawn(
    shutdown: CancellationToken,
    config_path: Option<PathBuf>,
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
                    break;
                }
                _ = int.recv() => {
                    tracing::info!(signal = "SIGINT", "stop requested");
                    break;
                }
                _ = hup.recv() => {
                    match crate::config::load_full(config_path.as_deref()).map(|l| (l.config, l.source)) {
                        Ok((_, source)) => {
                            tracing::info!(signal = "SIGHUP", config = %source, "config is valid: restarting in place to apply it");
                            flag.0.store(true, Ordering::SeqCst);
                            break;
                        }
                        Err(e) => {
                            tracing::error!(signal = "SIGHUP", "config rejected, keeping the running one: {e}");
                        }
                    }
                }
            }
        }
        shutdown.cancel();
    });
    Ok(reload)
}
