//! outpost's integration tests: real brokers (Debian's mosquitto and
//! outpost's own), the real `outpost` binary, real PTYs and real
//! certificates. One test binary with a module per area, so that the
//! test build links once instead of once per file.
//!
//! Run one area with e.g. `cargo test --test integration serial::`.

mod common;

mod access;
mod bad_input;
mod cli;
mod clock;
mod conformance;
mod crash;
mod damage;
mod data_path;
mod disk;
mod first_start;
mod hardening;
mod hostile;
mod http_ingest;
mod layout;
mod local_pubsub;
mod mtls;
mod preflight;
mod pressure;
mod provision;
mod reload;
mod remote;
mod remote_converge;
mod remote_guard;
mod serial;
mod stalled_acks;
mod systemd;
mod tb_children;
mod tb_firmware;
mod tb_limits;
mod tb_rules;
mod thethingsio;
mod thingsboard;
mod thingspeak;
mod tls;
mod ttn;
mod web;
