//! The generic MQTT sink: any broker, topics from a template, payloads as an
//! envelope that carries the measurement time (or the sensor's bytes as-is,
//! or several envelopes of one topic in a JSON array).

use std::sync::Arc;

use crate::config::{MqttSinkConfig, PayloadFormat};
use crate::record::{Record, Scan};
use crate::route::{Admit, Refusal};

use super::session::Settings;
use super::{check_publish, Platform, Publish, PUBLISH_OVERHEAD};

#[derive(Debug, Clone)]
pub struct MqttEncoder {
    template: String,
    format: PayloadFormat,
    max_packet: usize,
    batch_max: usize,
}

impl MqttEncoder {
    pub fn new(cfg: &MqttSinkConfig) -> MqttEncoder {
        MqttEncoder {
            template: cfg.topic.clone(),
            format: cfg.format,
            max_packet: usize::try_from(cfg.max_packet_size.0).unwrap_or(usize::MAX),
            batch_max: cfg.batch_max.max(1),
        }
    }

    pub fn settings(cfg: &MqttSinkConfig) -> Settings {
        Settings::new(cfg.connection(), cfg.client_id.clone())
            .login(cfg.username.clone(), cfg.password.clone())
            .client_cert(cfg.cert_file.as_ref(), cfg.key_file.as_ref())
            .window(cfg.inflight, cfg.max_packet_size.0 as usize)
    }
}

/// Fills a checked topic template (`site1/{device}/{kind}`) in one pass:
/// a name that itself holds `{topic}` is not filled again.
pub fn render_topic(template: &str, r: &Record) -> String {
    let mut out = String::with_capacity(
        template
            .len()
            .saturating_add(r.device.len())
            .saturating_add(r.topic.len()),
    );
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        let (text, tail) = rest.split_at(at);
        out.push_str(text);
        let fields = [
            ("{device}", r.device.as_str()),
            ("{kind}", r.kind.as_str()),
            ("{sink}", r.sink.as_str()),
            ("{topic}", r.topic.as_str()),
        ];
        let (field, value) = fields
            .into_iter()
            .find(|(field, _)| tail.starts_with(field))
            .unwrap_or(("{", "{"));
        out.push_str(value);
        rest = tail.get(field.len()..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

impl Platform for MqttEncoder {
    fn encode(&mut self, records: &[Record]) -> Vec<Publish> {
        match self.format {
            PayloadFormat::Batch => self.encode_batches(records),
            PayloadFormat::Raw | PayloadFormat::Envelope => {
                records.iter().map(|r| self.encode_one(r)).collect()
            }
        }
    }

    fn admission(&self) -> Arc<dyn Admit> {
        Arc::new(self.clone())
    }

    /// The check is the encoding: each envelope is made once, checked alone
    /// against the packet limit, and batched from there.
    fn encode_admitted(
        &mut self,
        records: Vec<Record>,
        _admit: &dyn Admit,
    ) -> (Vec<Publish>, Vec<(Record, Refusal)>) {
        let mut ok = Vec::with_capacity(records.len());
        let mut refused = Vec::new();
        for r in records {
            let topic = render_topic(&self.template, &r);
            let payload = self.payload(&r);
            match self.check(&topic, self.alone(payload.len())) {
                Ok(()) => ok.push((r.id, topic, payload)),
                Err(why) => refused.push((r, why)),
            }
        }
        let publishes = match self.format {
            PayloadFormat::Batch => self.batches(ok),
            PayloadFormat::Raw | PayloadFormat::Envelope => ok
                .into_iter()
                .map(|(id, topic, payload)| Publish {
                    topic,
                    payload,
                    ids: vec![id],
                })
                .collect(),
        };
        (publishes, refused)
    }
}

/// A record goes if its topic (from the template) is a topic name and its
/// encoded payload fits the packet limit.
impl Admit for MqttEncoder {
    fn admit(&self, r: &Record) -> Result<(), Refusal> {
        let len = self.alone(self.payload(r).len());
        self.check(&render_topic(&self.template, r), len)
    }
}

impl MqttEncoder {
    /// Can a publish of `len` bytes go on `topic`?
    fn check(&self, topic: &str, len: usize) -> Result<(), Refusal> {
        check_publish(topic, len, self.max_packet).map_err(|mut why| {
            let topic: String = topic.chars().take(80).collect();
            why.reason = format!("{}: `{topic}`", why.reason);
            why
        })
    }

    /// A record's payload on its own: the sensor's bytes or its envelope.
    fn payload(&self, r: &Record) -> Vec<u8> {
        match self.format {
            PayloadFormat::Raw => r.payload.clone(),
            PayloadFormat::Envelope | PayloadFormat::Batch => envelope(r),
        }
    }

    /// The size of a publish that carries one payload of `len` bytes alone
    /// (a batch of one adds `[` and `]`). Admission checks a batch's reading
    /// this way: a reading that fits alone always finds a batch it fits in.
    fn alone(&self, len: usize) -> usize {
        match self.format {
            PayloadFormat::Batch => len.saturating_add(2),
            PayloadFormat::Raw | PayloadFormat::Envelope => len,
        }
    }

    /// One record in a publish of its own (`raw` and `envelope`).
    fn encode_one(&self, r: &Record) -> Publish {
        Publish {
            topic: render_topic(&self.template, r),
            payload: self.payload(r),
            ids: vec![r.id],
        }
    }

    /// Envelopes grouped by upstream topic, in the order each topic first
    /// appears; each group split where `batch_max` or the packet limit
    /// would be passed. Within a topic the readings keep their order.
    fn encode_batches(&self, records: &[Record]) -> Vec<Publish> {
        self.batches(
            records
                .iter()
                .map(|r| (r.id, render_topic(&self.template, r), envelope(r)))
                .collect(),
        )
    }

    /// [`MqttEncoder::encode_batches`] of envelopes already made: (record
    /// id, its topic, its envelope).
    fn batches(&self, items: Vec<(i64, String, Vec<u8>)>) -> Vec<Publish> {
        let mut out: Vec<Publish> = Vec::new();
        // The open publish of each topic: its index in `out`.
        let mut open: Vec<(String, usize)> = Vec::new();
        for (id, topic, one) in items {
            let room = self
                .max_packet
                .saturating_sub(topic.len())
                .saturating_sub(PUBLISH_OVERHEAD);
            let slot = open.iter().position(|(t, _)| *t == topic);
            let target = slot.and_then(|s| open.get(s)).map(|(_, i)| *i);
            if let Some(p) = target.and_then(|i| out.get_mut(i)) {
                // `,` + the envelope, the closing `]` already counted.
                let grown = p.payload.len().saturating_add(one.len()).saturating_add(1);
                if p.ids.len() < self.batch_max && grown <= room {
                    if let Some(close) = p.payload.pop() {
                        p.payload.push(b',');
                        p.payload.extend(one);
                        p.payload.push(close);
                    }
                    p.ids.push(id);
                    continue;
                }
            }
            let mut payload = Vec::with_capacity(one.len().saturating_add(2));
            payload.push(b'[');
            payload.extend(one);
            payload.push(b']');
            let index = out.len();
            match slot.and_then(|s| open.get_mut(s)) {
                Some(entry) => entry.1 = index,
                None => open.push((topic.clone(), index)),
            }
            out.push(Publish {
                topic,
                payload,
                ids: vec![id],
            });
        }
        out
    }
}

/// `{"ts":..,"device":..,"values":..}` of one record.
fn envelope(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        r.payload
            .len()
            .saturating_add(r.device.len())
            .saturating_add(40),
    );
    Scan::of(&r.payload).write_envelope(r.ts, &r.device, &mut out);
    out
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
            ts_source: Default::default(),
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

    fn record(id: i64, device: &str, payload: &str) -> Record {
        Record {
            id,
            sink: "up".into(),
            device: device.into(),
            kind: RecordKind::Telemetry,
            ts: 1000 + id,
            topic: format!("sensors/{device}/telemetry"),
            payload: payload.as_bytes().to_vec(),
            ts_source: Default::default(),
        }
    }

    fn batch_encoder(extra: &str) -> MqttEncoder {
        let cfg: MqttSinkConfig = toml::from_str(&format!(
            "url = \"mqtt://localhost\"\nformat = \"batch\"\n{extra}"
        ))
        .expect("cfg");
        MqttEncoder::new(&cfg)
    }

    /// Checking and encoding in one pass gives what checking each record
    /// and then encoding the rest gives, in every format.
    #[test]
    fn one_pass_admission_matches_admit_then_encode() {
        let big = format!("{{\"v\":\"{}\"}}", "\\\"".repeat(600));
        let rs = vec![
            record(1, "a", r#"{"v":1}"#),
            record(2, "b", &big),
            record(3, "a", r#"{"v":3}"#),
            record(4, "c+d", r#"{"v":4}"#),
            record(5, "b", "21.5 not json"),
        ];
        for format in ["raw", "envelope", "batch"] {
            let cfg: MqttSinkConfig = toml::from_str(&format!(
                "url = \"mqtt://localhost\"\nformat = \"{format}\"\nmax_packet_size = 1024"
            ))
            .expect("cfg");
            let mut e = MqttEncoder::new(&cfg);
            let admit = e.clone();
            let (ok, bad): (Vec<_>, Vec<_>) =
                rs.iter().cloned().partition(|r| admit.admit(r).is_ok());
            let want = e.encode(&ok);
            let (got, refused) = e.encode_admitted(rs.clone(), &admit);
            assert_eq!(got, want, "{format}");
            let refused_ids: Vec<i64> = refused.iter().map(|(r, _)| r.id).collect();
            assert_eq!(
                refused_ids,
                bad.iter().map(|r| r.id).collect::<Vec<_>>(),
                "{format}"
            );
            for (r, why) in &refused {
                assert_eq!(
                    Some(why),
                    admit.admit(r).err().as_ref(),
                    "{format}: the same reason"
                );
            }
            assert!(refused_ids.contains(&4), "{format}: `+` in the topic");
        }
    }

    #[test]
    fn the_template_is_filled_once() {
        let mut r = record(1, "a{topic}", "{}");
        r.topic = "x/{device}".into();
        assert_eq!(
            render_topic("{sink}/{device}/{kind}/{topic}/{other}{", &r),
            "up/a{topic}/telemetry/x/{device}/{other}{"
        );
        assert_eq!(render_topic("plain", &r), "plain");
    }

    #[test]
    fn batch_groups_by_topic_in_order_and_obeys_count() {
        let mut e = batch_encoder("batch_max = 2");
        let rs = [
            record(1, "a", r#"{"v":1}"#),
            record(2, "b", r#"{"v":2}"#),
            record(3, "a", r#"{"v":3}"#),
            record(4, "a", r#"{"v":4}"#),
        ];
        let ps = e.encode(&rs);
        let got: Vec<(&str, &[i64])> = ps.iter().map(|p| (p.topic.as_str(), &p.ids[..])).collect();
        assert_eq!(
            got,
            [
                ("outpost/a/telemetry", &[1, 3][..]),
                ("outpost/b/telemetry", &[2][..]),
                ("outpost/a/telemetry", &[4][..]),
            ]
        );
        let v: serde_json::Value = serde_json::from_slice(&ps[0].payload).expect("json");
        assert_eq!(
            v,
            serde_json::json!([
                {"ts":1001,"device":"a","values":{"v":1}},
                {"ts":1003,"device":"a","values":{"v":3}}
            ])
        );
    }

    #[test]
    fn batch_stays_within_the_packet_limit_and_carries_every_id() {
        let mut e = batch_encoder("max_packet_size = 300");
        let rs: Vec<Record> = (1..=40)
            .map(|i| record(i, "dev", &format!(r#"{{"seq":{i},"pad":"xxxxxxxxxx"}}"#)))
            .collect();
        let ps = e.encode(&rs);
        assert!(ps.len() > 1, "300 bytes cannot hold 40 readings");
        let mut ids = Vec::new();
        for p in &ps {
            assert!(check_publish(&p.topic, p.payload.len(), 300).is_ok());
            let v: Vec<serde_json::Value> = serde_json::from_slice(&p.payload).expect("json array");
            assert_eq!(v.len(), p.ids.len());
            ids.extend(p.ids.iter().copied());
        }
        assert_eq!(ids, (1..=40).collect::<Vec<i64>>());
        // A reading admitted alone always fits a batch of its own.
        assert!(e.admit(&rs[0]).is_ok());
    }
}
