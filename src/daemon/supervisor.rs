//! Talking to systemd (`Type=notify`): READY=1 once the broker listens and
//! the outbox is open, a STATUS= line with queue depths, and WATCHDOG=1 only
//! while the pipeline is healthy ([`Health`]: the outbox writer, the topic
//! router and the local broker's router each answer in time). A wedged part
//! stops the pings, and systemd restarts the service after `WatchdogSec=`.
//!
//! Uses the pure-Rust `sd-notify` crate; without `NOTIFY_SOCKET` every call
//! is a no-op, so outpost runs the same outside systemd.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::health::Health;
use crate::stats::Stats;
use crate::store::Outbox;

/// Startup is complete.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("running")]) {
        tracing::warn!(error = %e, "cannot notify systemd (READY=1)");
    }
}

/// About to restart in place to apply a new config.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// One line for `systemctl status`.
fn status_line(outbox: &Outbox, stats: &Stats) -> String {
    let queues = outbox.stats();
    let queued: u64 = queues.values().map(|q| q.waiting()).sum();
    let connected = stats
        .sinks
        .values()
        .filter(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    let restarts: u64 = stats
        .sinks
        .values()
        .map(|s| crate::stats::get(&s.restarts))
        .sum();
    let mut line = format!(
        "queued={queued} sinks connected={connected}/{} accepted={}",
        stats.sinks.len(),
        crate::stats::get(&stats.ingest.accepted)
    );
    if restarts > 0 {
        line.push_str(&format!(" sink task restarts={restarts}"));
    }
    for (key, why) in crate::control::status::listener_problems() {
        line = format!("NOT listening ({key}): {why} | {line}");
    }
    if let Some(why) = crate::control::status::reload_refused() {
        let first = why.lines().next().unwrap_or_default().to_string();
        line = format!("reload refused: {first} | {line}");
    }
    line
}

/// Sends STATUS= every few seconds and, when systemd asked for a watchdog,
/// WATCHDOG=1 at half its interval while every part is healthy.
pub async fn run(health: Health, stats: Arc<Stats>, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog
        .map(|w| {
            w.checked_div(2)
                .unwrap_or_default()
                .max(Duration::from_millis(10))
        })
        .unwrap_or(Duration::from_secs(5))
        .min(Duration::from_secs(5));
    if let Some(w) = watchdog {
        tracing::info!(
            interval_ms = w.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    let mut tick = tokio::time::interval(every);
    let now = tokio::time::Instant::now();
    let mut last_status = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if watchdog.is_some() {
            match health.check(every).await {
                Ok(()) => {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
                Err(e) => {
                    tracing::error!(error = %e, "unhealthy; withholding the watchdog ping");
                }
            }
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            let line = status_line(&health.outbox, &stats);
            let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
            last_status = tokio::time::Instant::now();
            release_memory();
        }
    }
}

/// Gives the heap that bursts left free back to the OS. glibc keeps freed
/// memory in its arenas; on a Pi with a few hundred MB, a burst of large
/// messages would otherwise stay in RSS for good.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel; it
    // takes no pointers and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
