//! The generic MQTT sink: any broker, topics from a template, payloads as an
//! envelope that carries the measurement time (or the sensor's bytes as-is).

use std::sync::Arc;

use crate::config::{MqttSinkConfig, PayloadFormat};
use crate::record::{Reading, Record};
use crate::route::{Admit, Refusal};

use super::session::Settings;
use super::{check_publish, Platform, Publish};

#[derive(Debug, Clone)]
pub struct MqttEncoder {
    template: String,
    format: PayloadFormat,
    max_packet: usize,
}

impl MqttEncoder {
    pub fn new(cfg: &MqttSinkConfig) -> MqttEncoder {
        MqttEncoder {
            template: cfg.topic.clone(),
            format: cfg.format,
            max_packet: usize::try_from(cfg.max_packet_size.0).unwrap_or(usize::MAX),
        }
    }

    pub fn settings(cfg: &MqttSinkConfig) -> Settings {
        Settings::new(cfg.connection(), cfg.client_id.clone())
            .login(cfg.username.clone(), cfg.password.clone())
            .client_cert(cfg.cert_file.as_ref(), cfg.key_file.as_ref())
            .window(cfg.inflight, cfg.max_packet_size.0 as usize)
    }
}

/// Fills a checked topic template (`site1/{device}/{kind}`).
pub fn render_topic(template: &str, r: &Record) -> String {
    template
        .replace("{device}", &r.device)
        .replace("{kind}", r.kind.as_str())
        .replace("{sink}", &r.sink)
        .replace("{topic}", &r.topic)
}

impl Platform for MqttEncoder {
    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        records.iter().map(|r| self.encode_one(r)).collect()
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(self.clone())
    }
}

/// A record goes if its topic (from the template) is a topic name and its
/// encoded payload fits the packet limit.
impl Admit for MqttEncoder {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        let p = self.encode_one(r);
        check_publish(&p.topic, p.payload.len(), self.max_packet).map_err(|mut why| {
            let topic: String = p.topic.chars().take(80).collect();
            why.reason = format!("{}: `{topic}`", why.reason);
            why
        })
    }
}

impl MqttEncoder {
    fn encode_one(&self, r: &Record) -> Publish {
        let payload = match self.format {
            PayloadFormat::Raw => r.payload.clone(),
            PayloadFormat::Envelope => {
                let reading = Reading::parse(&r.payload);
                // Serializing a serde_json::Value cannot fail.
                serde_json::to_vec(&reading.envelope(r.ts, &r.device)).unwrap_or_default()
            }
        };
        Publish {
            topic: render_topic(&self.template, r),
            payload,
            ids: vec![r.id],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    #[test]
    fn envelope_and_template() {
        let cfg: MqttSinkConfig = toml::from_str(
            r#"url = "mqtt://localhost"
               topic = "site1/{device}/{kind}""#,
        )
        .expect("cfg");
        let mut e = MqttEncoder::new(&cfg);
        let r = Record {
            id: 7,
            sink: "up".into(),
            device: "t1".into(),
            kind: RecordKind::Telemetry,
            ts: 1234,
            topic: "sensors/t1/telemetry".into(),
            payload: br#"{"temp":21.5}"#.to_vec(),
        };
        let p = e.encode(std::slice::from_ref(&r)).remove(0);
        assert_eq!(p.topic, "site1/t1/telemetry");
        assert_eq!(p.ids, [7]);
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"ts":1234,"device":"t1","values":{"temp":21.5}})
        );
    }
}
