//! Is the pipeline alive? The watchdog asks this before every ping, so a
//! wedged part leads systemd to restart outpost instead of leaving a box that
//! accepts connections but moves no data.
//!
//! Three parts are checked, each within the same deadline:
//! - the **outbox writer** answers a round trip (a stuck disk or a held
//!   SQLite lock fails this);
//! - the **topic router** every source goes through can be locked (a
//!   poisoned lock, or one held forever, fails this);
//! - the **local broker** is healthy: its own supervisor's last check
//!   passed (every plain listener answers CONNECT with CONNACK, a publish
//!   comes back through it), and its state can be taken now;
//! - **every sink's tasks run**: a task that stopped is restarted by its
//!   supervisor within a minute; one that stays down for
//!   [`SINK_DOWN_LIMIT`] means the supervisor cannot bring it back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use tokio::time::Instant;

use crate::route::Router;
use crate::source::broker::Broker;
use crate::stats::Stats;
use crate::store::Outbox;

/// Which part failed, and how.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unhealthy {
    #[error("the outbox writer did not answer within {0:?}")]
    Outbox(Duration),
    #[error("the outbox writer failed: {0}")]
    OutboxFailed(String),
    #[error("the topic router stayed locked for {0:?}")]
    RouterWedged(Duration),
    #[error("the topic router's lock is poisoned (a panic while routing)")]
    RouterPoisoned,
    #[error("the local broker is unhealthy: {0}")]
    Broker(String),
    #[error("a task of sink {sink} has been down for {secs} s")]
    SinkDown { sink: String, secs: i64 },
}

/// How long a sink's task may stay down before outpost counts as unhealthy.
pub const SINK_DOWN_LIMIT: Duration = Duration::from_secs(300);

/// What the watchdog checks.
#[derive(Clone)]
pub struct Health {
    pub outbox: Outbox,
    pub router: Option<Arc<Mutex<Router>>>,
    pub broker: Option<Broker>,
    pub stats: Option<Arc<Stats>>,
}

impl Health {
    /// Checks every part; the first failure is returned.
    pub async fn check(&self, within: Duration) -> Result<(), Unhealthy> {
        // Through the writer: a commit stuck behind a lock or a dying disk
        // holds this up, where a read on the reader connection would not.
        match tokio::time::timeout(within, self.outbox.flush()).await {
            Err(_) => return Err(Unhealthy::Outbox(within)),
            Ok(Err(e)) => return Err(Unhealthy::OutboxFailed(e.to_string())),
            Ok(Ok(_)) => {}
        }
        if let Some(router) = &self.router {
            router_lockable(router, within).await?;
        }
        if let Some(stats) = &self.stats {
            sinks_up(stats, crate::clock::mono_ms())?;
        }
        if let Some(broker) = &self.broker {
            if !broker.health().healthy.load(Ordering::Relaxed) {
                let why = broker
                    .health()
                    .last_problem
                    .lock()
                    .ok()
                    .and_then(|p| p.clone())
                    .unwrap_or_else(|| "its last check failed".into());
                return Err(Unhealthy::Broker(why));
            }
            broker
                .check(&[], within)
                .await
                .map_err(|e| Unhealthy::Broker(e.to_string()))?;
        }
        Ok(())
    }
}

/// Fails if a sink's task has been down longer than [`SINK_DOWN_LIMIT`].
fn sinks_up(stats: &Stats, now: i64) -> Result<(), Unhealthy> {
    let limit = i64::try_from(SINK_DOWN_LIMIT.as_millis()).unwrap_or(i64::MAX);
    for (name, s) in &stats.sinks {
        let since = s.down_since_ms.load(Ordering::Relaxed);
        if since > 0 && now.saturating_sub(since) > limit {
            return Err(Unhealthy::SinkDown {
                sink: name.clone(),
                secs: now.saturating_sub(since) / 1000,
            });
        }
    }
    Ok(())
}

/// Tries the lock without blocking a thread on it, until `within` passes.
async fn router_lockable(router: &Mutex<Router>, within: Duration) -> Result<(), Unhealthy> {
    let deadline = Instant::now()
        .checked_add(within)
        .unwrap_or_else(Instant::now);
    loop {
        // The guard (if any) is dropped at the end of this statement, before
        // any await.
        let outcome = match router.try_lock() {
            Ok(_) => Some(Ok(())),
            Err(TryLockError::Poisoned(_)) => Some(Err(Unhealthy::RouterPoisoned)),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                Some(Err(Unhealthy::RouterWedged(within)))
            }
            Err(TryLockError::WouldBlock) => None,
        };
        match outcome {
            Some(result) => return result,
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FullPolicy, StoreConfig, Synchronous};
    use crate::units::{ByteSize, Seconds};

    fn outbox(dir: &std::path::Path) -> Outbox {
        let cfg = StoreConfig {
            path: "o.db".into(),
            max_bytes: ByteSize(1 << 20),
            max_age: Seconds(Duration::from_secs(3600)),
            full_policy: FullPolicy::DropOldest,
            synchronous: Synchronous::Normal,
            ..StoreConfig::default()
        };
        let (outbox, _writer) = Outbox::open(dir.join("o.db"), &cfg, &["up".into()]).expect("open");
        outbox
    }

    #[tokio::test]
    async fn a_held_router_lock_is_unhealthy_and_a_free_one_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Arc::new(Mutex::new(Router::new(&[]).expect("router")));
        let health = Health {
            outbox: outbox(dir.path()),
            router: Some(router.clone()),
            broker: None,
            stats: None,
        };
        assert_eq!(health.check(Duration::from_millis(200)).await, Ok(()));
        // A routing thread that takes the lock and never lets go.
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let r = router.clone();
        let wedged = std::thread::spawn(move || {
            let _guard = r.lock().expect("lock");
            let _ = locked_tx.send(());
            let _ = released.recv();
        });
        locked.recv().expect("the thread holds the lock");
        assert_eq!(
            health.check(Duration::from_millis(200)).await,
            Err(Unhealthy::RouterWedged(Duration::from_millis(200)))
        );
        drop(release);
        wedged.join().expect("join");
        assert_eq!(health.check(Duration::from_millis(200)).await, Ok(()));
    }

    #[test]
    fn a_sink_task_down_past_the_limit_is_unhealthy() {
        let stats = Stats::new(&["up".to_string()]);
        assert_eq!(sinks_up(&stats, 1_000_000_000), Ok(()));
        let s = stats.sinks.get("up").expect("sink up");
        s.down_since_ms.store(1_000_000_000, Ordering::Relaxed);
        assert_eq!(sinks_up(&stats, 1_000_000_000 + 60_000), Ok(()));
        assert_eq!(
            sinks_up(&stats, 1_000_000_000 + 301_000),
            Err(Unhealthy::SinkDown {
                sink: "up".into(),
                secs: 301
            })
        );
    }

    #[tokio::test]
    async fn a_poisoned_router_lock_is_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Arc::new(Mutex::new(Router::new(&[]).expect("router")));
        let r = router.clone();
        let _ = std::thread::spawn(move || {
            let _guard = r.lock().expect("lock");
            panic!("a panic while routing");
        })
        .join();
        let health = Health {
            outbox: outbox(dir.path()),
            router: Some(router),
            broker: None,
            stats: None,
        };
        assert_eq!(
            health.check(Duration::from_millis(200)).await,
            Err(Unhealthy::RouterPoisoned)
        );
    }
}
