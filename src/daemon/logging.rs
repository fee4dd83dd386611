//! Logging: to the journal when systemd started us (`JOURNAL_STREAM` is set;
//! structured fields such as `sink`, `device` and `error` become journal
//! fields), else to stderr. The filter can be changed while running (the
//! `set_log_level` RPC).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();

fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("`{level}` is not a log filter: {e}"))
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(level: &str) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let initial = filter(&wanted).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(initial);
    // The journal only when systemd says it started us and journald answers.
    let journal = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|j| {
            j.with_syslog_identifier("outpost".into())
                .with_field_prefix(None)
        });
    let fmt = journal.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(crate::control::journal::RecentLayer)
        .with(journal)
        .with(fmt)
        .try_init();
    if installed.is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// Changes the filter of the running process.
pub fn set_level(level: &str) -> Result<(), String> {
    let f = filter(level)?;
    let handle = HANDLE.get().ok_or("logging is not initialised")?;
    handle.reload(f).map_err(|e| e.to_string())?;
    tracing::info!(level, "log level changed");
    Ok(())
}
