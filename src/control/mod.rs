//! Control: what comes down from the cloud. Shared attributes and RPC for
//! local devices go out on the local broker through outpost's own MQTT
//! client ([`downlink`]); replies go back up through the sink's session.
//! Outpost's own shared attributes (its remote configuration), its reports
//! and health telemetry are in [`remote`].

pub mod downlink;
pub mod remote;
pub mod status;
