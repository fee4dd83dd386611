//! Sources: where readings enter outpost.
//!
//! Every source hands what it hears to the one [`Ingest`] handle, which
//! routes, stamps and stores it in the outbox:
//!
//! - [`broker`]: the local MQTT broker LAN clients connect to; it holds
//!   each PUBACK until the reading is committed, and serves local pub/sub;
//! - [`serial`]: sensors on a UART: line protocols and Modbus RTU (and
//!   Modbus TCP slaves, polled the same way);
//! - [`http`]: `POST /ingest/{device}`, for devices that speak HTTP.
//!
//! [`presence`] says when a device behind a source goes away.
//!
//! Readings a platform sends down (LoRaWAN uplinks) enter through the same
//! handle, from the sink that receives them.

pub mod broker;
pub mod http;
mod ingest;
pub mod presence;
pub mod serial;

pub use ingest::Ingest;
