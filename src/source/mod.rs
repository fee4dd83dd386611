//! Sources: where readings come from.
//!
//! - [`broker`]: the embedded rumqttd that LAN clients use for pub/sub.
//! - [`front`]: the ingest front sensors connect to; it relays to rumqttd and
//!   holds each PUBACK until the reading is committed (the default).
//! - [`link`]: the alternative ingest that takes routed messages off
//!   rumqttd's in-process link, with rumqttd acknowledging at once.
//! - [`serial`]: sensors on a UART: line protocols and Modbus RTU.
//! - [`inject`]: readings from an upstream platform (LoRaWAN uplinks).

pub mod broker;
pub mod front;
pub mod inject;
pub mod link;
pub mod serial;
