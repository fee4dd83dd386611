//! Devices coming and going: a source says when the device behind it is
//! gone (its MQTT connection ended, its will fired, its serial port
//! vanished) and when it is back (its first reading on a new connection, a
//! port that opens again), and a sink that speaks for devices (ThingsBoard's
//! gateway API) tells its platform (`v1/gateway/disconnect` once the
//! device's queued readings are sent; `connect` with its next reading).
//!
//! A broadcast channel: a source never waits for a sink, and a sink that
//! falls behind misses notices (it still disconnects idle children).

use tokio::sync::broadcast;

/// Notices kept for a slow sink.
const CAPACITY: usize = 1024;

/// Devices one source speaks for, at most.
pub const MAX_SPOKEN: usize = 16;

/// A device that went away (and why), or came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Gone { device: String, why: &'static str },
    Back { device: String },
}

/// The channel; cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence(broadcast::Sender<Notice>);

impl Default for Presence {
    fn default() -> Presence {
        Presence(broadcast::channel(CAPACITY).0)
    }
}

impl Presence {
    pub fn gone(&self, device: &str, why: &'static str) {
        self.send(Notice::Gone {
            device: device.to_string(),
            why,
        });
    }

    pub fn back(&self, device: &str) {
        self.send(Notice::Back {
            device: device.to_string(),
        });
    }

    fn send(&self, n: Notice) {
        // No subscriber (no gateway sink): nobody needs to know.
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(n);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.0.subscribe()
    }

    /// Notes that `device` was heard from a source (a connection, a port):
    /// the first [`MAX_SPOKEN`] are remembered, and the first time on this
    /// source says it is back.
    pub fn note(&self, spoken: &mut Vec<String>, device: &str) {
        if spoken.len() < MAX_SPOKEN && !spoken.iter().any(|d| d == device) {
            spoken.push(device.to_string());
            self.back(device);
        }
    }
}
