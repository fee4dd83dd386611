//! The first start: a freshly installed outpost points at no real cloud.
//! Until one of its sinks has reached its platform once, outpost says, in
//! one plain line in the log and in `outpost status`, which file to edit
//! and where the examples are. Reaching a platform is remembered in the
//! state directory, so a later outage does not bring the line back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stats::{self, Stats};

/// Where the package puts the example configurations.
pub const EXAMPLES: &str = "/usr/share/doc/outpost/examples/";

/// The state file that says some sink has connected once.
const MARKER: &str = "reached-cloud";

/// How often the line is repeated in the log while nothing connects.
const REPEAT: Duration = Duration::from_secs(600);

/// How often the sinks' counters are looked at.
const POLL: Duration = Duration::from_secs(1);

pub struct FirstStart {
    marker: PathBuf,
    hint: String,
    reached: AtomicBool,
}

impl FirstStart {
    /// `config` is the file outpost runs on (none: the built-in config).
    pub fn new(state_dir: &Path, config: Option<&Path>, sinks: &[String]) -> Arc<FirstStart> {
        let marker = state_dir.join(MARKER);
        let file = match config {
            Some(p) => format!("edit {}", p.display()),
            None => "write a config file (outpost runs on its built-in one)".to_string(),
        };
        let what = if sinks.is_empty() {
            "no sink is configured".to_string()
        } else {
            format!(
                "no cloud platform has been reached yet (sinks: {})",
                sinks.join(", ")
            )
        };
        let reload = if config.is_some() {
            ", then `systemctl reload outpost`"
        } else {
            ""
        };
        let hint = format!(
            "{what}: {file} and point a [sink.NAME] at your platform (examples in {EXAMPLES}, or run `outpost init`){reload}"
        );
        Arc::new(FirstStart {
            reached: AtomicBool::new(marker.exists()),
            marker,
            hint,
        })
    }

    /// The line to show, until some sink has connected once. The sinks'
    /// counters are read here too, not only by [`FirstStart::watch`]: a
    /// `status` RPC that arrives over a platform's first session must not
    /// be told that no platform was reached.
    pub fn hint(&self, stats: &Stats) -> Option<&str> {
        if self.reached.load(Ordering::Relaxed) {
            return None;
        }
        if any_connected(stats) {
            self.remember();
            return None;
        }
        Some(self.hint.as_str())
    }

    /// Notes, once, that a sink reached its platform, in memory and in the
    /// state directory.
    fn remember(&self) {
        if self.reached.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = std::fs::write(&self.marker, b"") {
            tracing::warn!(path = %self.marker.display(), error = %e, "cannot remember the first cloud connection");
        }
        tracing::info!("a sink reached its platform for the first time");
    }

    /// Says the line now and every few minutes until a sink connects; then
    /// remembers that in the state directory.
    pub async fn watch(self: Arc<Self>, stats: Arc<Stats>, shutdown: CancellationToken) {
        if self.reached.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!("{}", self.hint);
        let mut said = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            if self.reached.load(Ordering::Relaxed) {
                return;
            }
            if any_connected(&stats) {
                self.remember();
                return;
            }
            if said.elapsed() >= REPEAT {
                tracing::warn!("{}", self.hint);
                said = tokio::time::Instant::now();
            }
        }
    }
}

fn any_connected(stats: &Stats) -> bool {
    stats.sinks.values().any(|s| stats::get(&s.connects) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_file_and_the_examples_until_a_sink_connected_once() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = Path::new("/etc/outpost/outpost.toml");
        let stats = Stats::new(&["cloud".to_string()]);
        let f = FirstStart::new(dir.path(), Some(cfg), &["cloud".into()]);
        let hint = f.hint(&stats).expect("a hint on a first start");
        assert!(hint.contains("edit /etc/outpost/outpost.toml"), "{hint}");
        assert!(hint.contains(EXAMPLES), "{hint}");
        assert!(hint.contains("sinks: cloud"), "{hint}");
        assert!(!hint.contains('\n'));
        std::fs::write(dir.path().join(MARKER), b"").expect("marker");
        let again = FirstStart::new(dir.path(), Some(cfg), &["cloud".into()]);
        assert_eq!(again.hint(&stats), None, "remembered across restarts");
    }

    #[test]
    fn the_line_is_gone_the_moment_a_sink_connects_not_a_poll_later() {
        let dir = tempfile::tempdir().expect("dir");
        let stats = Stats::new(&["tb".to_string()]);
        let f = FirstStart::new(dir.path(), None, &["tb".into()]);
        assert!(f.hint(&stats).is_some());
        let tb = stats.sinks.get("tb").expect("the sink's counters");
        stats::add(&tb.connects, 1);
        assert_eq!(f.hint(&stats), None, "a status asked over that session");
        let again = FirstStart::new(dir.path(), None, &["tb".into()]);
        assert_eq!(
            again.hint(&Stats::new(&["tb".to_string()])),
            None,
            "and remembered for the next start"
        );
    }
}
