//! Sources: where readings enter outpost.
//!
//! Every source hands what it hears to the one [`Ingest`] handle, which
//! routes, stamps and stores it in the outbox:
//!
//! - [`front`]: the MQTT listener LAN sensors connect to; it holds each
//!   PUBACK until the reading is committed and relays to the broker;
//! - [`broker`]: the embedded rumqttd behind the front (local pub/sub,
//!   retained messages, wills), and how outpost's own clients reach it;
//! - [`link`]: the alternative ingest off rumqttd's in-process link, with
//!   rumqttd acknowledging at once (the measured baseline);
//! - [`serial`]: sensors on a UART: line protocols and Modbus RTU.
//!
//! Readings a platform sends down (LoRaWAN uplinks) enter through the same
//! handle, from the sink that receives them.

pub mod broker;
pub mod front;
mod ingest;
pub mod link;
pub mod serial;

pub use ingest::Ingest;
