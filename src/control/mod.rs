//! Control: what comes down from the cloud. Shared attributes and RPC for
//! local devices go out on the local broker through outpost's own MQTT
//! client ([`downlink`]); replies go back up through the sink's session.

pub mod downlink;
pub mod status;
