//! Rows acknowledged upstream whose delete is not yet sent to the outbox.
//!
//! Every PUBACK used to be its own delete command, and each one woke the
//! outbox's writer thread: at 50,000 PUBACKs a second that hand-over was 9 %
//! of outpost's CPU. The rows are held for a few milliseconds instead and
//! handed over together. Holding them risks nothing: a delete lost in a
//! crash only sends its reading again (a duplicate, never a loss), and the
//! writer already waits a moment to commit deletes together.

use std::time::Duration;

use tokio::time::Instant;

/// How long acknowledged rows wait to be deleted together.
const HOLD: Duration = Duration::from_millis(5);
/// How many wait at most.
const MOST: usize = 1024;

/// [`HOLD`]; a debug build's integration tests may stretch it
/// (`OUTPOST_TEST_ACK_HOLD_MS`) to end a connection while rows are held.
/// Never in a release build.
fn hold() -> Duration {
    crate::units::test_stretch("OUTPOST_TEST_ACK_HOLD_MS", HOLD)
}

#[derive(Debug)]
pub(super) struct Acked {
    ids: Vec<i64>,
    since: Option<Instant>,
    hold: Duration,
}

impl Default for Acked {
    fn default() -> Acked {
        Acked {
            ids: Vec::new(),
            since: None,
            hold: hold(),
        }
    }
}

impl Acked {
    pub(super) fn add(&mut self, ids: impl IntoIterator<Item = i64>) {
        let before = self.ids.len();
        self.ids.extend(ids);
        if before == 0 && !self.ids.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// When the rows held must go, if any are held.
    pub(super) fn due_at(&self) -> Option<Instant> {
        self.since.and_then(|t| t.checked_add(self.hold))
    }

    /// Held long enough, or enough of them?
    pub(super) fn due(&self) -> bool {
        self.ids.len() >= MOST || self.due_at().is_some_and(|t| t <= Instant::now())
    }

    /// The rows held, which are no longer.
    pub(super) fn take(&mut self) -> Vec<i64> {
        self.since = None;
        std::mem::take(&mut self.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_after_the_hold_or_when_there_are_many() {
        let mut a = Acked::default();
        assert!(!a.due() && a.due_at().is_none(), "nothing held");
        let t0 = Instant::now();
        a.add([1, 2]);
        let first = a.due_at().expect("held");
        assert!(first >= t0 + HOLD && first <= Instant::now() + HOLD);
        a.add([3]);
        assert_eq!(
            a.due_at(),
            Some(first),
            "a later ack does not restart the hold"
        );
        std::thread::sleep(HOLD);
        assert!(a.due());
        assert_eq!(a.take(), [1, 2, 3]);
        assert!(!a.due() && a.due_at().is_none());
        a.add(0..MOST as i64);
        assert!(a.due(), "a full hold goes at once");
        a.add(std::iter::empty());
        assert_eq!(a.take().len(), MOST);
    }
}
