//! outpost: an edge gateway daemon.
//!
//! ```text
//!  LAN sensors ──MQTT──▶ source::broker (outpost's own broker core)
//!  UART sensors ───────▶ source::serial
//!  platform uplinks ───▶ (from their sink)
//!                              │ every reading through source::Ingest
//!                              ▼
//!                    route (topic filter → sink, device, ts)
//!                              ▼
//!                    store (SQLite outbox, one FIFO queue per sink)
//!                              ▼
//!                    sink (uplink session: QoS 1, delete on PUBACK) ──▶ cloud
//!                              │ downlink
//!                              ▼
//!                    control (local devices, own RPC, remote config)
//! ```
//!
//! Layers, bottom to top; each imports only the ones below it:
//!
//! 1. leaf types: [`clock`] (outpost's clock and the wall clock's trust),
//!    [`record`] (the record, its kind), [`topic`]
//!    (filters, templates), [`units`] (sizes, durations, rates), [`net`]
//!    (broker URLs, loopback ports), [`files`] (private state files),
//!    [`throttle`] (log lines at most once a minute per key), [`recent`]
//!    (maps by name that forget the least recent), [`access`] (Mosquitto's
//!    password and ACL files);
//! 2. [`config`]: the TOML file, checked with every problem reported by
//!    key path; [`pki`]: certificate chains and keys;
//! 3. [`store`] (the durable outbox), [`route`] and [`stats`];
//! 4. [`source`]: where readings enter, all through one `Ingest`;
//! 5. [`sink`]: where records leave (the upstream session and one dialect
//!    per platform);
//! 6. [`control`]: what comes down (downlink, own RPC, remote config) and
//!    what outpost reports;
//! 7. [`daemon`]: wiring, signals, systemd, logging, the status socket.

// Input (packets, payloads, names, config, overlays, server answers)
// reaches nearly every module: no unchecked arithmetic, indexing or
// unwrap outside tests, so no input can panic outpost.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod access;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod files;
pub mod net;
pub mod pki;
pub mod recent;
pub mod record;
pub mod route;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod topic;
pub mod units;
