//! Sources: where readings come from. Today the embedded local broker
//! ([`broker`]) and the ingest path that takes routed messages off it
//! ([`link`]).

pub mod broker;
pub mod link;
