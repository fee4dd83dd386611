//! Routes: which local messages become records, for which sink and device,
//! stamped with which time.
//!
//! A route is a topic filter (`sensors/+/telemetry`) bound to a sink. A
//! message that matches no route is left to the local broker alone, so LAN
//! pub/sub is untouched.
//!
//! **Times.** A payload's own `ts` is kept when it is plausible: after
//! 2000-01-01 and at most `max_ts_ahead` past the gateway clock (10-digit
//! Unix seconds are converted to milliseconds). Anything else is stamped
//! at ingest, and counted. An automatic stamp is the later of now and the
//! device's last automatic stamp + 1 ms, so one device's stamps strictly
//! increase (platforms keep one value per device, key and millisecond); a
//! payload's ts never moves that clock.
//!
//! **Refusals.** A record that its sink could never send (a device name
//! with control characters, a topic or payload its platform refuses) is
//! refused here, at ingest, where the sensor can still be told; each sink
//! says what it takes through an [`Admit`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::{self, Now};
use crate::config::{ReadingsConfig, RouteConfig};
use crate::recent::Recent;
use crate::record::{device_name_problem, elements, Record, RecordKind, Scan, TsSource};
use crate::topic::TopicFilter;

/// 2000-01-01T00:00:00Z in milliseconds: earlier times are not plausible.
pub const EARLIEST_TS: i64 = 946_684_800_000;

/// A change of the wall clock's offset to outpost's clock at least this
/// large is a step of the clock, not the wobble of reading two clocks.
const STEP_MS: i64 = 1_000;

/// While the wall clock is not trusted, a payload's ts is judged without
/// it: plausible from [`EARLIEST_TS`] to this long after outpost was built
/// (or after the wall clock, if that reads later).
pub const UNTRUSTED_AHEAD_MS: i64 = 20 * 365 * 86_400_000;

/// Devices whose last automatic stamp is remembered; beyond, the ones
/// heard from least recently are forgotten.
const MAX_DEVICES: usize = 10_000;

/// Why a record is refused, and the MQTT 5 reason code that says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// 0x90 topic name invalid, 0x97 quota exceeded (too large), 0x99
    /// payload format invalid.
    pub code: u8,
}

impl Refusal {
    pub fn topic(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            code: 0x90,
        }
    }

    pub fn too_large(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            code: 0x97,
        }
    }

    pub fn format(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            code: 0x99,
        }
    }
}

/// A sink's answer to "could you ever send this record?", asked at ingest
/// (and again by the sink before it sends, for records queued before a
/// limit or a template changed).
pub trait Admit: Send + Sync {
    fn admit(&self, record: &Record) -> Result<(), Refusal>;
}

/// What a message became.
#[derive(Debug, Default)]
pub struct Routed {
    pub records: Vec<Record>,
    /// Records their sink (or the rules for device names) refused.
    pub refused: Vec<(Record, Refusal)>,
    /// The payload's ts was not plausible and was replaced by the ingest time.
    pub ts_replaced: bool,
}

#[derive(Debug, Clone)]
enum DeviceFrom {
    Level(usize),
    Fixed(String),
}

#[derive(Debug, Clone)]
struct Route {
    filter: TopicFilter,
    sink: String,
    device: DeviceFrom,
    kind: RecordKind,
}

/// Turns local messages into records.
pub struct Router {
    routes: Vec<Route>,
    /// device → (outpost's clock, the stamp) at its last automatic stamp.
    last_ts: Recent<(i64, i64)>,
    /// How far past the gateway clock a payload's ts may be.
    max_ahead_ms: i64,
    admits: HashMap<String, Arc<dyn Admit>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes)
            .field("devices", &self.last_ts.len())
            .finish_non_exhaustive()
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when
/// cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut out: String = s
        .char_indices()
        .take_while(|(i, c)| i.saturating_add(c.len_utf8()) <= max)
        .map(|(_, c)| c)
        .collect();
    out.push('…');
    out
}

/// Is `name` usable as a device name anywhere?
pub fn check_device(name: &str) -> Result<(), Refusal> {
    match device_name_problem(name) {
        Some(why) => Err(Refusal::topic(why)),
        None => Ok(()),
    }
}

impl Router {
    /// Builds the router from checked route configs.
    pub fn new(configs: &[RouteConfig]) -> Result<Router, String> {
        let mut r = Router {
            routes: Vec::new(),
            last_ts: Recent::new(MAX_DEVICES),
            max_ahead_ms: 86_400_000,
            admits: HashMap::new(),
        };
        r.reconfigure(configs)?;
        Ok(r)
    }

    /// With the `[readings]` settings (how far past the gateway clock a
    /// payload's ts may be).
    pub fn with_readings(mut self, cfg: &ReadingsConfig) -> Router {
        self.set_readings(cfg);
        self
    }

    pub fn set_readings(&mut self, cfg: &ReadingsConfig) {
        self.max_ahead_ms = i64::try_from(cfg.max_ts_ahead.0.as_millis()).unwrap_or(i64::MAX);
        crate::clock::set_flag_file(cfg.synchronized_file.clone());
    }

    /// What `sink` takes (replaces what it took).
    pub fn set_admit(&mut self, sink: &str, admit: Arc<dyn Admit>) {
        self.admits.insert(sink.to_string(), admit);
    }

    /// Replaces the routes (a remote configuration change), keeping each
    /// device's last stamp so stamps keep increasing.
    pub fn reconfigure(&mut self, configs: &[RouteConfig]) -> Result<(), String> {
        let mut routes = Vec::with_capacity(configs.len());
        for c in configs {
            let filter = TopicFilter::parse(&c.topic)?;
            let device = match &c.device {
                Some(d) => DeviceFrom::Fixed(d.clone()),
                None => DeviceFrom::Level(filter.device_level(c.device_level)?),
            };
            routes.push(Route {
                filter,
                sink: c.sink.clone(),
                device,
                kind: c.kind,
            });
        }
        self.routes = routes;
        Ok(())
    }

    /// The topic filters to listen on.
    pub fn filters(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.filter.text()).collect()
    }

    /// Devices whose automatic stamps are remembered.
    pub fn devices(&self) -> usize {
        self.last_ts.len()
    }

    /// The next automatic stamp for `device`, and whether it is
    /// provisional.
    pub fn stamp(&mut self, device: &str) -> (i64, TsSource) {
        self.stamp_at(device, &clock::now())
    }

    /// A stamp from the wall clock, strictly increasing per device on
    /// outpost's clock (so a step back of the wall clock never holds a
    /// device's stamps in the future), provisional while the wall clock is
    /// not trusted.
    fn stamp_at(&mut self, device: &str, now: &Now) -> (i64, TsSource) {
        let last = self.last_ts.entry(device, || (i64::MIN, i64::MIN));
        let mono = now.mono.max(last.0.saturating_add(1));
        let mut ts = mono.saturating_add(now.offset());
        // The two clocks are read a moment apart, so their offset wobbles
        // by a millisecond: that must not give a device two equal stamps.
        // A real step back (a second or more) is followed.
        if ts <= last.1 && last.1.saturating_sub(ts) < STEP_MS {
            ts = last.1.saturating_add(1);
        }
        *last = (mono, ts);
        let source = if now.trusted {
            TsSource::Trusted
        } else {
            // The offset this stamp was taken at (bumps included), so its
            // correction is outpost's clock at the stamp plus the true
            // offset: distinct for every stamp of the device.
            TsSource::Provisional {
                offset: ts.saturating_sub(mono),
            }
        };
        (ts, source)
    }

    /// Is a payload's `ts` plausible at `now`? Judged against the wall
    /// clock only when it is trusted.
    fn plausible(&self, ts: i64, now: &Now) -> bool {
        let latest = if now.trusted {
            now.wall.saturating_add(self.max_ahead_ms)
        } else {
            now.wall
                .max(clock::BUILD_MS)
                .saturating_add(UNTRUSTED_AHEAD_MS)
        };
        ts >= EARLIEST_TS && ts <= latest
    }

    /// What a message on `topic` becomes: one record per sink whose route
    /// matches (the first matching route per sink wins), each admitted or
    /// refused. Nothing when no route matches.
    pub fn route(&mut self, topic: &str, payload: &[u8]) -> Routed {
        self.route_now(topic, payload, &clock::now())
    }

    /// [`Router::route`] at a wall-clock time `now` that is trusted.
    #[cfg(test)]
    fn route_at(&mut self, topic: &str, payload: &[u8], now: i64) -> Routed {
        let now = Now {
            wall: now,
            mono: now,
            trusted: true,
        };
        self.route_now(topic, payload, &now)
    }

    fn route_now(&mut self, topic: &str, payload: &[u8], now: &Now) -> Routed {
        let mut out = Routed::default();
        let mut parts: Option<Vec<(Vec<u8>, Stamp)>> = None;
        let mut sinks: Vec<&str> = Vec::new();
        let routes = std::mem::take(&mut self.routes);
        for r in &routes {
            if sinks.contains(&r.sink.as_str()) || !r.filter.matches(topic) {
                continue;
            }
            let device = match &r.device {
                DeviceFrom::Fixed(d) => d.clone(),
                DeviceFrom::Level(l) => match topic.split('/').nth(*l) {
                    Some(d) => d.to_string(),
                    None => continue,
                },
            };
            sinks.push(&r.sink);
            let parts = parts.get_or_insert_with(|| split(payload));
            for (part, reading) in parts.iter() {
                self.route_one(r, &device, topic, part, reading, now, &mut out);
            }
        }
        self.routes = routes;
        out
    }

    /// One reading of a message for the sink of route `r`.
    #[allow(clippy::too_many_arguments)]
    fn route_one(
        &mut self,
        r: &Route,
        device: &str,
        topic: &str,
        payload: &[u8],
        reading: &Stamp,
        now: &Now,
        out: &mut Routed,
    ) {
        let device = device.to_string();
        let given = reading.ts.filter(|t| self.plausible(*t, now));
        out.ts_replaced |= reading.ts_given && given.is_none();
        let named = check_device(&device);
        let (ts, ts_source) = match (given, &named) {
            (Some(ts), _) => (ts, TsSource::Trusted),
            // A device that cannot be a device keeps no clock either.
            (None, Err(_)) => (now.wall, TsSource::Trusted),
            (None, Ok(())) => self.stamp_at(&device, now),
        };
        // A name that cannot be one is kept short in the dead letters
        // (the reason says how long it was; the payload is kept whole).
        let (device, kept_topic) = match &named {
            Ok(()) => (device, topic.to_string()),
            Err(_) => (clip(&device, 64), clip(topic, 1024)),
        };
        let record = Record {
            id: 0,
            sink: r.sink.clone(),
            device,
            kind: r.kind,
            ts,
            topic: kept_topic,
            payload: payload.to_vec(),
            ts_source,
        };
        let verdict = named.and_then(|()| match self.admits.get(&r.sink) {
            Some(a) => a.admit(&record),
            None => Ok(()),
        });
        match verdict {
            Ok(()) => out.records.push(record),
            Err(why) => out.refused.push((record, why)),
        }
    }

    /// Does any route select this topic?
    pub fn selects(&self, topic: &str) -> bool {
        self.routes.iter().any(|r| r.filter.matches(topic))
    }
}

/// Readings one message holds: a JSON list of objects (`[{"ts":..,
/// "values":{..}}, ..]` or `[{"temp":1}, ..]`, as ThingsBoard reads
/// telemetry) is one reading per element; anything else is one reading.
/// Lists longer than [`MAX_PARTS`] stay one reading.
fn split(payload: &[u8]) -> Vec<(Vec<u8>, Stamp)> {
    if payload.first() == Some(&b'[') {
        if let Some(items) = elements(payload) {
            let objects = !items.is_empty()
                && items.len() <= MAX_PARTS
                && items.iter().all(|i| i.first() == Some(&b'{'));
            if objects {
                return items
                    .into_iter()
                    .map(|bytes| {
                        let stamp = Stamp::of(&bytes);
                        (bytes, stamp)
                    })
                    .collect();
            }
        }
    }
    vec![(payload.to_vec(), Stamp::of(payload))]
}

/// What routing needs of a reading: the time it gives, if any.
struct Stamp {
    ts: Option<i64>,
    ts_given: bool,
}

impl Stamp {
    fn of(payload: &[u8]) -> Stamp {
        let scan = Scan::of(payload);
        Stamp {
            ts: scan.ts,
            ts_given: scan.ts_given,
        }
    }
}

/// Elements of a list split into readings at most.
const MAX_PARTS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(topic: &str, sink: &str) -> RouteConfig {
        RouteConfig {
            topic: topic.into(),
            sink: sink.into(),
            device_level: None,
            device: None,
            kind: RecordKind::Telemetry,
        }
    }

    const NOW: i64 = 1_795_000_000_000;

    #[test]
    fn stamps_are_strictly_increasing_per_device() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let a = r.route_at("s/d1/t", b"{}", NOW).records;
        let b = r.route_at("s/d1/t", b"{}", NOW).records;
        let c = r.route_at("s/d2/t", b"{}", NOW).records;
        assert_eq!(a[0].ts, NOW);
        assert_eq!(b[0].ts, NOW + 1);
        assert_eq!(c[0].ts, NOW);
        assert_eq!(a[0].device, "d1");
    }

    #[test]
    fn a_list_in_thingsboards_form_is_one_reading_per_element() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let (a, b) = (NOW - 2000, NOW - 1000);
        let list = format!(r#"[{{"ts":{a},"values":{{"t":1}}}},{{"ts":{b},"values":{{"t":2}}}}]"#);
        let got = r.route_at("s/d/t", list.as_bytes(), NOW).records;
        let ts: Vec<i64> = got.iter().map(|x| x.ts).collect();
        assert_eq!(ts, [a, b]);
        assert_eq!(
            crate::record::Reading::parse(&got[1].payload).values,
            serde_json::json!({"t": 2})
        );
        // Plain objects: stamped one after the other.
        let plain = r.route_at("s/e/t", br#"[{"t":1},{"h":2}]"#, NOW).records;
        assert_eq!(
            plain.iter().map(|x| x.ts).collect::<Vec<_>>(),
            [NOW, NOW + 1]
        );
        // Anything else stays one reading.
        assert_eq!(r.route_at("s/f/t", b"[1,2,3]", NOW).records.len(), 1);
        assert_eq!(r.route_at("s/f/t", b"[]", NOW).records.len(), 1);
    }

    #[test]
    fn a_plausible_payload_ts_is_kept_in_ms_or_seconds() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let ms = NOW - 5000;
        let got = r.route_at("s/d/t", format!("{{\"ts\":{ms},\"v\":1}}").as_bytes(), NOW);
        assert_eq!(got.records[0].ts, ms);
        assert!(!got.ts_replaced);
        let secs = r.route_at(
            "s/d/t",
            format!("{{\"ts\":{}.5,\"v\":1}}", ms / 1000).as_bytes(),
            NOW,
        );
        assert_eq!(secs.records[0].ts, ms / 1000 * 1000 + 500);
        assert!(r.route_at("other", b"x", NOW).records.is_empty());
    }

    #[test]
    fn an_implausible_ts_is_replaced_and_never_moves_the_clock() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        for bad in [
            "9223372036854775807",
            "1e30",
            "0",
            "86400000",
            "1826000000000",
        ] {
            let got = r.route_at("s/d/t", format!("{{\"ts\":{bad},\"v\":1}}").as_bytes(), NOW);
            assert!(got.ts_replaced, "{bad}");
            assert!(
                got.records[0].ts >= NOW && got.records[0].ts < NOW + 10,
                "{bad}"
            );
        }
        // A year ahead and then an automatic stamp: the stamp is now-ish.
        let year = NOW + 365 * 86_400_000;
        r.route_at("s/e/t", format!("{{\"ts\":{year}}}").as_bytes(), NOW);
        let next = r.route_at("s/e/t", b"{\"v\":2}", NOW).records;
        assert!(next[0].ts < NOW + 10, "{}", next[0].ts);
    }

    /// Property: whatever ts a payload carries, a record is stamped with it
    /// only when plausible, and the device's automatic clock is exactly
    /// max(now, last automatic stamp + 1), never moved by a payload.
    #[test]
    fn no_payload_ts_moves_the_automatic_clock() {
        let mut rng = fastrand::Rng::with_seed(15);
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let mut last_auto = i64::MIN;
        let mut now = NOW;
        for _ in 0..20_000 {
            now += rng.i64(0..3);
            let ts = match rng.u8(0..6) {
                0 => format!("{}", rng.i64(..)),
                1 => format!("{}", rng.u64(..)),
                2 => format!("{:e}", rng.f64() * 10f64.powi(rng.i32(0..40))),
                3 => format!("{}.{}", rng.i64(1_000_000_000..9_999_999_999), rng.u16(..)),
                4 => format!("{}", now + rng.i64(-86_400_000 * 400..86_400_000 * 400)),
                _ => "\"soon\"".to_string(),
            };
            let given = r.route_at("s/d/t", format!("{{\"ts\":{ts},\"v\":1}}").as_bytes(), now);
            let rec = &given.records[0];
            assert!(
                rec.ts >= EARLIEST_TS && rec.ts <= now + 86_400_000,
                "ts {ts} gave {}",
                rec.ts
            );
            // Stamped automatically: a ts that was replaced, or none at all.
            if given.ts_replaced || ts.starts_with('"') {
                last_auto = now.max(last_auto.saturating_add(1));
                assert_eq!(rec.ts, last_auto, "ts {ts}");
            }
            let auto = r.route_at("s/d/t", b"{\"v\":2}", now).records[0].ts;
            last_auto = now.max(last_auto.saturating_add(1));
            assert_eq!(auto, last_auto, "after ts {ts}");
        }
    }

    #[test]
    fn bad_device_names_are_refused_with_a_topic_reason() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        for bad in ["a\0b", "line\nbreak", &"x".repeat(300)] {
            let got = r.route_at(&format!("s/{bad}/t"), b"{}", NOW);
            assert!(got.records.is_empty());
            assert_eq!(got.refused[0].1.code, 0x90, "{bad:?}");
        }
        assert_eq!(r.devices(), 0, "refused names keep no clock");
    }

    #[test]
    fn a_sinks_admission_refuses_what_it_could_never_send() {
        struct NoNulls;
        impl Admit for NoNulls {
            fn admit(&self, r: &Record) -> Result<(), Refusal> {
                if r.payload.windows(4).any(|w| w == b"null") {
                    return Err(Refusal::format("a null value"));
                }
                Ok(())
            }
        }
        let mut r = Router::new(&[route("s/+/t", "a"), route("s/+/t", "b")]).unwrap();
        r.set_admit("a", Arc::new(NoNulls));
        let got = r.route_at("s/d/t", b"{\"v\":null}", NOW);
        assert_eq!(got.records.len(), 1, "sink b takes it");
        assert_eq!(got.refused[0].0.sink, "a");
    }

    #[test]
    fn the_device_map_is_bounded() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        for i in 0..(MAX_DEVICES + 5000) {
            r.route_at(&format!("s/d{i}/t"), b"{}", NOW);
        }
        assert!(r.devices() <= MAX_DEVICES);
    }

    #[test]
    fn one_record_per_sink() {
        let mut r = Router::new(&[
            route("s/+/t", "a"),
            route("s/+/#", "a"),
            route("s/+/t", "b"),
        ])
        .unwrap();
        let recs = r.route_at("s/d/t", b"1", NOW).records;
        let sinks: Vec<&str> = recs.iter().map(|r| r.sink.as_str()).collect();
        assert_eq!(sinks, ["a", "b"]);
    }

    /// 2025-01-01: a Pi without a real-time clock, booted without network.
    const OLD: i64 = 1_735_689_600_000;

    fn untrusted(wall: i64, mono: i64) -> Now {
        Now {
            wall,
            mono,
            trusted: false,
        }
    }

    #[test]
    fn a_sensors_own_ts_is_kept_while_the_clock_is_wrong() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let right = clock::BUILD_MS + 86_400_000;
        let given = format!("{{\"ts\":{right},\"v\":1}}");
        // The clock reads 2025: a ts two years "ahead" of it is kept.
        let got = r.route_now("s/d/t", given.as_bytes(), &untrusted(OLD, 5_000));
        assert_eq!(got.records[0].ts, right);
        assert_eq!(got.records[0].ts_source, TsSource::Trusted);
        assert!(!got.ts_replaced);
        // The clock reads 1970: a valid 2005 ts is kept too.
        let y2005 = 1_104_537_600_000;
        let got = r.route_now(
            "s/d/t",
            format!("{{\"ts\":{y2005}}}").as_bytes(),
            &untrusted(0, 6_000),
        );
        assert_eq!(got.records[0].ts, y2005);
        // Still implausible without the clock: before 2000, or decades
        // past this build.
        for bad in [EARLIEST_TS - 1, clock::BUILD_MS + UNTRUSTED_AHEAD_MS + 1] {
            let got = r.route_now(
                "s/d/t",
                format!("{{\"ts\":{bad}}}").as_bytes(),
                &untrusted(OLD, 7_000),
            );
            assert!(got.ts_replaced, "{bad}");
        }
    }

    #[test]
    fn automatic_stamps_of_an_untrusted_clock_are_provisional_with_its_offset() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let now = untrusted(OLD, 5_000);
        let a = r.route_now("s/d/t", b"{}", &now).records.remove(0);
        let b = r.route_now("s/d/t", b"{}", &now).records.remove(0);
        assert_eq!(a.ts, OLD);
        assert_eq!(b.ts, OLD + 1);
        for rec in [&a, &b] {
            assert_eq!(
                rec.ts_source,
                TsSource::Provisional {
                    offset: OLD - 5_000
                }
            );
        }
        // Once trusted, they are corrected by the step and stay 1 ms apart.
        let later = Now {
            wall: NOW,
            mono: 65_000,
            trusted: true,
        };
        let fix = |rec: &Record| match rec.ts_source {
            TsSource::Provisional { offset } => clock::correct(rec.ts, offset, &later),
            _ => rec.ts,
        };
        assert_eq!(fix(&a), NOW - 60_000);
        assert_eq!(fix(&b), NOW - 60_000 + 1);
    }

    #[test]
    fn a_step_back_of_the_wall_clock_does_not_hold_stamps_in_the_future() {
        let mut r = Router::new(&[route("s/+/t", "up")]).unwrap();
        let day = 86_400_000;
        let ahead = Now {
            wall: NOW + day,
            mono: 1_000,
            trusted: true,
        };
        let first = r.route_now("s/d/t", b"{}", &ahead).records[0].ts;
        assert_eq!(first, NOW + day);
        // NTP steps the clock a day back, one second later.
        let back = Now {
            wall: NOW + 1_000,
            mono: 2_000,
            trusted: true,
        };
        let next = r.route_now("s/d/t", b"{}", &back).records[0].ts;
        assert_eq!(next, NOW + 1_000, "stamped from the clock as it reads now");
        // Stamps of one device still never repeat within a millisecond.
        let again = r.route_now("s/d/t", b"{}", &back).records[0].ts;
        assert_eq!(again, NOW + 1_001);
    }
}
