//! Sinks: where records leave the outbox.
//!
//! Every sink is one upstream MQTT [`session`] (backoff, TLS, in-flight
//! window, delete-on-PUBACK, replay after reconnect, dead letters) driving a
//! [`Platform`]: the dialect of one cloud (its topics, payloads, limits and
//! downlink). The platforms are [`mqtt`] (any broker), [`thingsboard`],
//! [`thingspeak`], [`thethingsio`] and [`ttn`] (The Things Stack).
//!
//! A platform never reaches into the rest of outpost. What comes down from
//! the cloud it turns into [`Action`]s: a reply to send up, a [`Downlink`]
//! for the local devices, a reading to ingest, new limits, a call to
//! outpost's own [`Agent`] (ping, status, log level) or a [`ControlEvent`]
//! for the remote configuration. What outpost reports about itself arrives
//! as a [`Report`], which the platform puts on its own topics.

pub mod mqtt;
pub mod session;
pub mod thethingsio;
pub mod thingsboard;
pub mod thingspeak;
pub mod ttn;

use serde_json::{Map, Value};

use std::sync::Arc;

use crate::record::Record;
use crate::route::{Admit, Refusal};

pub use session::{Settings, Uplink};

/// Bytes a PUBLISH needs beyond its topic and payload: the fixed header
/// (at most 5), the topic's length (2) and the packet id (2).
pub const PUBLISH_OVERHEAD: usize = 9;

/// Can a publish on `topic` with `payload` bytes go to a broker that takes
/// packets of at most `max_packet` bytes?
pub fn check_publish(topic: &str, payload: usize, max_packet: usize) -> Result<(), Refusal> {
    // The topic is not quoted: a platform may carry a secret in it.
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(Refusal::topic(
            "the upstream topic is not a topic name (empty, or with a wildcard or NUL)",
        ));
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(Refusal::topic("an upstream topic longer than 65535 bytes"));
    }
    let size = topic
        .len()
        .saturating_add(payload)
        .saturating_add(PUBLISH_OVERHEAD);
    if size > max_packet {
        return Err(Refusal::too_large(format!(
            "{size} bytes as sent upstream: larger than the platform's packet limit of {max_packet} bytes"
        )));
    }
    Ok(())
}

/// One MQTT PUBLISH to send upstream and the outbox rows it carries. The rows
/// are deleted when the broker acknowledges the publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub ids: Vec<i64>,
}

impl Publish {
    /// A publish that carries no outbox rows (a reply, a report).
    pub fn control(topic: impl Into<String>, body: &Value) -> Publish {
        Publish {
            topic: topic.into(),
            // Serializing a serde_json::Value cannot fail.
            payload: serde_json::to_vec(body).unwrap_or_default(),
            ids: Vec::new(),
        }
    }
}

/// Builds the upstream reply from a device's answer or an error text.
pub type Reply = Box<dyn FnOnce(Result<Value, String>) -> Publish + Send>;

/// What a platform asks of the local side.
pub enum Downlink {
    /// Publish once (not retained) on the local broker.
    Publish { topic: String, payload: Vec<u8> },
    /// Merge these values into the device's settings and publish them,
    /// retained, on `topic`.
    Settings {
        topic: String,
        values: Map<String, Value>,
    },
    /// Publish `request` on `request_topic`; the first message on
    /// `response_topic` (or a timeout) answers upstream through `reply`.
    Rpc {
        request_topic: String,
        request: Vec<u8>,
        response_topic: String,
        reply: Reply,
    },
}

/// What the cloud tells outpost about its own configuration.
#[derive(Debug)]
pub enum ControlEvent {
    /// Outpost's own shared attributes that arrived (an update, or the
    /// answer to the request made on connect).
    Shared(Map<String, Value>),
    /// The sink connected (again): time to report.
    Connected,
}

/// What outpost reports about itself; the platform picks the topics.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Client attributes of outpost's own device.
    Attributes(Map<String, Value>),
    /// Telemetry of outpost's own device, at `ts`.
    Telemetry { ts: i64, values: Map<String, Value> },
}

/// What goes up besides records: replies made on the local side, reports.
pub enum Upstream {
    Publish(Publish),
    Report(Report),
    /// A message on a local topic the platform watches.
    Local {
        topic: String,
        payload: Vec<u8>,
    },
    /// A device behind a source went away or came back (see
    /// `source::presence`).
    Presence(crate::source::presence::Notice),
}

/// outpost's own RPC methods, carried out by the control layer.
/// The RPC methods outpost answers itself (see [`Agent`]); on a device
/// session any other method is for the local device behind it.
pub const OWN_METHODS: &[&str] = &[
    "ping",
    "gateway_ping",
    "status",
    "gateway_stats",
    "set_log_level",
];

pub trait Agent: Send + Sync {
    /// Answers `method` (`ping`, `status`, `set_log_level`, ...).
    fn call(&self, method: &str, params: &Value) -> Value;
}

/// What a platform asks for when a message comes down.
pub enum Action {
    /// Send this upstream (a reply; it carries no outbox rows).
    Upstream(Publish),
    /// Hand this to the local devices.
    Local(Downlink),
    /// A reading that came from the platform (an uplink): route and store
    /// it like a local reading on `topic`.
    Ingest { topic: String, payload: Vec<u8> },
    /// The platform told its limits: fewer publishes in flight, rate
    /// windows for the session and its children.
    Limits {
        max_inflight: Option<usize>,
        rate: Option<session::BudgetSpec>,
    },
    /// An RPC to outpost itself: the [`Agent`] answers, `reply` puts the
    /// answer on the platform's topic.
    Own {
        method: String,
        params: Value,
        reply: Box<dyn FnOnce(Value) -> Publish + Send>,
    },
    /// For the remote configuration.
    Control(ControlEvent),
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

    /// What the platform can ever take, asked at ingest (a record it
    /// cannot is refused there) and again before sending (a record queued
    /// before a limit or a template changed goes to the dead letters).
    fn admission(&self) -> Arc<dyn Admit>;

    /// Encodes records, in outbox order, into publishes. Every record's id
    /// must appear in exactly one returned publish (or the record is never
    /// deleted and is sent again after the next reconnect).
    fn encode(&mut self, records: &[Record]) -> Vec<Publish>;

    /// A reply made outside the platform (an RPC's answer from a local
    /// device or from outpost itself), just before it is sent: the
    /// platform may put in front of it what its server needs first.
    fn reply(&mut self, publish: Publish) -> Vec<Publish> {
        vec![publish]
    }

    /// A message on a subscribed topic: what to send upstream, and what to
    /// hand to the local side.
    fn on_message(&mut self, _topic: &str, _payload: &[u8]) -> Vec<Action> {
        Vec::new()
    }

    /// A report about outpost itself, on the platform's topics (`None`:
    /// this platform takes no reports).
    fn report(&self, _report: Report) -> Vec<Publish> {
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

    /// Queued records checked again (a limit or template may have changed
    /// since they were stored) and encoded: the publishes, and the records
    /// the platform can no longer take, with why. A platform whose check is
    /// its encoding does both in one pass.
    fn encode_admitted(
        &mut self,
        records: Vec<Record>,
        admit: &dyn Admit,
    ) -> (Vec<Publish>, Vec<(Record, Refusal)>) {
        let mut ok = Vec::with_capacity(records.len());
        let mut refused = Vec::new();
        for r in records {
            match admit.admit(&r) {
                Ok(()) => ok.push(r),
                Err(why) => refused.push((r, why)),
            }
        }
        (self.encode(&ok), refused)
    }

    /// A message on a local topic the platform watches: what goes up.
    fn on_local(&mut self, _topic: &str, _payload: &[u8]) -> Vec<Action> {
        Vec::new()
    }

    /// A device went away or came back (the platform may tell, later,
    /// from [`Platform::tick`]).
    fn presence(&mut self, _notice: crate::source::presence::Notice) {}

    /// What `publish` costs against the platform's rate windows (default:
    /// one message).
    fn cost(&self, _publish: &Publish) -> session::Cost {
        session::Cost::message()
    }

    /// Called about once a second while connected: publishes that come
    /// from time passing (a child's disconnect after it went idle or away).
    /// `drained`: nothing of the sink's is queued or waiting to go.
    fn tick(&mut self, _now: std::time::Instant, _drained: bool) -> Vec<Publish> {
        Vec::new()
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
