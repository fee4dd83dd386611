//! Checkpoints off the sensor's path: the WAL is copied into the file by a
//! thread of its own, so no commit (and no PUBACK held for one) ever waits
//! for a checkpoint. It runs every few seconds, and sooner when the writer
//! says a lot was written. A FIFO queue fills pages and empties them again:
//! much of what a few seconds of WAL hold is gone by the time they are
//! copied, and a page written a hundred times between two checkpoints is
//! copied once, so fewer pages reach the flash than with a checkpoint every
//! 1,000 pages in the writer.
//!
//! PASSIVE checkpoints never block the writer or the reader; the WAL starts
//! over at the writer's next commit once everything in it is copied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::db::explain;
use super::StoreError;

/// How often the WAL is copied into the file at the latest.
const EVERY: Duration = Duration::from_secs(5);

/// WAL size after which the writer asks for a checkpoint sooner, so a
/// burst does not grow the WAL beyond `journal_size_limit`.
pub(crate) const NUDGE_BYTES: i64 = 4 << 20;

pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(|e| explain(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| explain(path, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("outbox-checkpoint".into())
            .spawn(move || run(conn, &path, &flag))
            .map_err(|e| StoreError::Sqlite {
                path: PathBuf::new(),
                detail: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(conn: Connection, path: &Path, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(EVERY);
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        match result {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                tracing::warn!(path = %path.display(), error = %e, "outbox checkpoint failed; the WAL grows until one succeeds");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl Checkpointer {
    /// A checkpoint now rather than at the next period.
    pub(crate) fn nudge(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
