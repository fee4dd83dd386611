//! Control: what comes down from the cloud and what outpost says about
//! itself.
//!
//! - [`downlink`]: a sink's downlink carried out on the local broker
//!   (settings retained for devices, RPC to devices and their answers);
//! - [`agent`]: outpost's own RPC methods (ping, status, set_log_level);
//! - [`remote`]: the remote configuration, checked, applied, persisted and
//!   rolled back when it breaks the uplink;
//! - [`report`]: facts, outcomes and health telemetry about outpost;
//! - [`status`]: the status snapshot and how it is printed;
//! - [`web`]: `[http]`: the status page, `/metrics`, `/api/status`, the
//!   dead-letter buttons and HTTP ingest;
//! - [`history`]: the last hour, sampled each second, for the charts;
//! - [`journal`]: the last warnings and errors, for the status page;
//! - [`first_start`]: until a sink has reached its platform once, the one
//!   line that says which file to edit.

pub mod agent;
pub mod downlink;
pub mod first_start;
pub mod history;
pub mod journal;
pub mod preflight;
pub mod remote;
pub mod report;
pub mod status;
pub mod web;
