//! outpost: an edge gateway daemon.
//!
//! ```text
//!  LAN sensors ──MQTT──▶ source::front ──relay──▶ source::broker (rumqttd)
//!  UART sensors ───────▶ source::serial
//!                              │ readings
//!                              ▼
//!                    route (topic filter → sink, device, ts)
//!                              ▼
//!                    store (SQLite outbox, one FIFO queue per sink)
//!                              ▼
//!                    sink (uplink session: QoS 1, delete on PUBACK) ──▶ cloud
//! ```
//!
//! - [`config`]: the TOML file, checked with every problem reported by key path.
//! - [`source`]: where readings come from.
//! - [`route`] and [`record`]: what a reading becomes.
//! - [`store`]: the durable outbox.
//! - [`sink`]: where records go, and the upstream MQTT session.
//! - [`control`]: what comes down from the cloud (settings, RPC).
//! - [`daemon`]: wiring, signals, logging and orderly shutdown.
//! - [`pki`]: certificate chains and keys (`outpost cert`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod net;
pub mod pki;
pub mod record;
pub mod route;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;
