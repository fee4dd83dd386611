//! The last warnings and errors, kept in memory for the status page: a
//! technician at the site sees what went wrong without `journalctl`.
//!
//! A `tracing` layer (installed by the daemon's logging) copies each WARN
//! and ERROR event into a bounded ring; nothing below WARN is kept, and
//! the ring never grows past [`KEEP`] lines of at most [`LINE_MAX`] bytes.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines kept.
pub const KEEP: usize = 50;
/// Longest line kept (longer ones are cut).
pub const LINE_MAX: usize = 600;

/// One warning or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at_ms: i64,
    pub level: &'static str,
    pub text: String,
}

static RECENT: Mutex<VecDeque<Line>> = Mutex::new(VecDeque::new());

/// The kept lines, newest first.
pub fn recent() -> Vec<Line> {
    let ring = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    ring.iter().rev().cloned().collect()
}

fn keep(line: Line) {
    let mut ring = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() >= KEEP {
        ring.pop_front();
    }
    ring.push_back(line);
}

/// The layer that fills the ring.
pub struct RecentLayer;

/// `message key=value ...`, as the fmt layer writes it.
#[derive(Default)]
struct Text(String, String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.1, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut t = Text::default();
        event.record(&mut t);
        let mut text = t.0;
        text.push_str(&t.1);
        if text.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut = cut.saturating_sub(1);
            }
            text.truncate(cut);
            text.push('…');
        }
        keep(Line {
            at_ms: crate::record::now_ms(),
            level: if level == Level::ERROR {
                "ERROR"
            } else {
                "WARN"
            },
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_warnings_and_errors_only_and_stays_bounded() {
        let sub = tracing_subscriber::registry().with(RecentLayer);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("not kept");
            tracing::warn!(sink = "up", "first warning");
            for i in 0..(KEEP + 5) {
                tracing::error!(n = i, "error {i}");
            }
            tracing::warn!(long = %"x".repeat(2 * LINE_MAX), "last");
        });
        let lines = recent();
        assert_eq!(lines.len(), KEEP);
        assert_eq!(lines[0].level, "WARN");
        assert!(lines[0].text.starts_with("last long="), "{:?}", lines[0]);
        assert!(lines[0].text.len() <= LINE_MAX + '…'.len_utf8());
        assert!(lines.iter().all(|l| !l.text.contains("not kept")));
        assert!(lines[1].text.starts_with("error 54 n=54"), "{:?}", lines[1]);
    }
}
