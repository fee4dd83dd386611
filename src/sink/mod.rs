//! Sinks: where records go. Each sink owns one upstream MQTT session
//! ([`uplink`]) and an encoder that speaks its platform's topics and payloads
//! (today the generic [`mqtt`] one). The session is the same for every
//! platform: backoff, TLS, in-flight window, delete-on-PUBACK, replay after
//! reconnect. Only the encoding differs.

pub mod mqtt;
pub mod uplink;

use crate::record::Record;

/// One MQTT PUBLISH to send upstream and the outbox rows it carries. The rows
/// are deleted when the broker acknowledges the publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub ids: Vec<i64>,
}

/// Turns records into a platform's publishes.
pub trait Encoder: Send + 'static {
    /// Encodes one record. A record may be folded into a later publish by
    /// encoders that batch; the generic one never does.
    fn encode(&mut self, record: &Record) -> Publish;
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: cannot read the CA file {path}: {detail}")]
    CaFile {
        sink: String,
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("sink {sink}: {detail}")]
    Tls { sink: String, detail: String },
    #[error("sink {sink}: {detail}")]
    Config { sink: String, detail: String },
}
