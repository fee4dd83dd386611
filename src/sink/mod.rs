//! Sinks: where records go. Each sink owns one upstream MQTT session
//! ([`uplink`]) and an encoder that speaks its platform's topics and payloads
//! (today the generic [`mqtt`] one). The session is the same for every
//! platform: backoff, TLS, in-flight window, delete-on-PUBACK, replay after
//! reconnect. Only the encoding differs.

pub mod mqtt;
pub mod provision;
pub mod rate;
pub mod thethingsio;
pub mod thingsboard;
pub mod thingspeak;
pub mod ttn;
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

/// What a platform asks for when a message comes down.
pub enum Action {
    /// Send this upstream (a reply; it carries no outbox rows).
    Upstream(Publish),
    /// Hand this to the local devices.
    Local(crate::control::downlink::Downlink),
    /// A reading that came from the platform (an uplink): route and store
    /// it like a local reading on `topic`.
    Ingest { topic: String, payload: Vec<u8> },
    /// The platform told its limits: fewer publishes in flight, a message rate.
    Limits {
        max_inflight: Option<usize>,
        rate: Option<rate::RateLimit>,
    },
}

/// What a platform does at the start of each connection.
#[derive(Debug, Default)]
pub struct SessionStart {
    /// Topics to subscribe to (QoS 1).
    pub subscribe: Vec<String>,
    /// Publishes to send first; they carry no outbox rows.
    pub publish: Vec<Publish>,
}

/// A platform's dialect: its topics, payloads and downlink. The uplink
/// session does the rest (connection, window, acknowledgements, replay).
pub trait Platform: Send + 'static {
    /// Called after every CONNACK: reset per-connection state.
    fn session_start(&mut self) -> SessionStart {
        SessionStart::default()
    }

    /// Does the platform order data by its timestamp rather than by arrival?
    /// Then readings that arrive during a connection are sent before the
    /// backlog, so current values are never held back by a long drain.
    fn live_first(&self) -> bool {
        false
    }

    /// Can the platform ever take this record? A record it cannot is moved
    /// to the dead letters instead of blocking the queue.
    fn validate(&self, _record: &Record) -> Result<(), String> {
        Ok(())
    }

    /// Encodes records, in outbox order, into publishes. Every record's id
    /// must appear in exactly one returned publish (or the record is never
    /// deleted and is sent again after the next reconnect).
    fn encode(&mut self, records: &[Record]) -> Vec<Publish>;

    /// A message on a subscribed topic: what to send upstream, and what to
    /// hand to the local side.
    fn on_message(&mut self, _topic: &str, _payload: &[u8]) -> Vec<Action> {
        Vec::new()
    }

    /// A platform-specific hint appended to a CONNACK refusal.
    fn refused_hint(&self, _code: rumqttc::ConnectReturnCode) -> Option<&'static str> {
        None
    }

    /// A topic as it may appear in logs and dead-letter reasons (a
    /// platform that puts a secret in its topics hides it here).
    fn topic_for_logs(&self, topic: &str) -> String {
        topic.to_string()
    }

    /// The QoS of publishes. A QoS 0 platform sends no PUBACK: a record is
    /// deleted once the broker has answered a PINGREQ sent after the
    /// record's publish went out (the broker read the connection up to
    /// there), that is within about one keep-alive.
    fn qos(&self) -> rumqttc::QoS {
        rumqttc::QoS::AtLeastOnce
    }

    /// How many of the next records (in order) to encode now, or how long
    /// to wait before asking again. A platform that merges readings per
    /// interval waits for the interval to close.
    fn ready(&self, _next: &[&Record], _now_ms: i64) -> Ready {
        Ready::All
    }
}

/// See [`Platform::ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    All,
    Count(usize),
    WaitMs(u64),
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
    #[error("sink {sink}: client certificate: {source}")]
    Identity {
        sink: String,
        source: crate::pki::PkiError,
    },
}
