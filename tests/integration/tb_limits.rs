//! ThingsBoard's session limits, every one of them: the fixture (a real
//! mosquitto, the test playing ThingsBoard) answers `getSessionLimits` with
//! small limits, hourly ones included, and then replays what outpost sent
//! through the server's own token buckets (`TbRateLimits`), per scope (the
//! gateway's session and each child) and per kind (messages, telemetry
//! messages, data points). A message a bucket would refuse fails the test;
//! every reading must still arrive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::thingsboard::{answer_session_limits, tb_config};

/// One message outpost sent, as the platform counts it.
#[derive(Debug, Clone)]
struct Counted {
    at: Instant,
    telemetry: bool,
    points: u64,
    /// Children it speaks for, with their data points.
    children: Vec<(String, u64)>,
}

fn counted(s: &Seen) -> Option<Counted> {
    if s.topic.starts_with("v1/devices/me/rpc/response/") {
        return None; // the platform's own answers
    }
    let v: Value = serde_json::from_slice(&s.payload).unwrap_or(Value::Null);
    let telemetry = s.topic == "v1/gateway/telemetry" || s.topic == "v1/devices/me/telemetry";
    let mut children = Vec::new();
    if s.topic.starts_with("v1/gateway/") {
        if let Some(d) = v.get("device").and_then(Value::as_str) {
            children.push((d.to_string(), 0));
        } else if let Value::Object(m) = &v {
            for (d, body) in m {
                let points = if telemetry {
                    body.as_array()
                        .map(|a| {
                            a.iter()
                                .map(|e| e["values"].as_object().map_or(0, |o| o.len() as u64))
                                .sum()
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                children.push((d.clone(), points));
            }
        }
    }
    let own = |v: &Value| v["values"].as_object().map_or(0, |o| o.len() as u64);
    let points = if s.topic == "v1/devices/me/telemetry" {
        // The gateway's own telemetry (health): `{"ts":..,"values":{..}}`.
        match &v {
            Value::Array(a) => a.iter().map(own).sum(),
            other => own(other),
        }
    } else {
        children.iter().map(|(_, p)| p).sum()
    };
    Some(Counted {
        at: s.at,
        telemetry,
        points,
        children,
    })
}

/// Replays what outpost sent through ThingsBoard's own bucket for each
/// `N:seconds` limit of one kind in one scope (`TbRateLimits`: bucket4j,
/// capacity N, `refillGreedy(N, seconds)`, full at the start) and fails the
/// test where the server would have refused a message. 60 ms of refill are
/// forgiven for delivery jitter between the server and this collector.
/// Returns a line per limit with the fewest tokens the bucket had left.
pub(crate) fn check(
    scope: &str,
    kind: &str,
    spec: &str,
    events: &[(Instant, u64)],
    failures: &mut Vec<String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for part in spec.split(',') {
        let (n, secs) = part.split_once(':').expect("N:seconds");
        let (n, secs): (f64, f64) = (n.parse().expect("n"), secs.parse().expect("s"));
        let rate = n / secs;
        let mut tokens = n;
        let mut lowest = n;
        let mut at = events.first().map(|(t, _)| *t);
        for (t, cost) in events {
            if let Some(last) = at {
                tokens = (tokens + t.duration_since(last).as_secs_f64() * rate).min(n);
            }
            at = Some(*t);
            tokens -= *cost as f64;
            lowest = lowest.min(tokens);
        }
        lines.push(format!(
            "{scope} {kind} {part}: fewest tokens left {lowest:.2}"
        ));
        if lowest < -(rate * 0.06) {
            failures.push(format!(
                "{scope}: ThingsBoard's {kind} bucket {part} would have refused a message (tokens down to {lowest:.2})"
            ));
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_limit_is_obeyed_per_window_and_per_child_and_every_reading_arrives() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    // Health telemetry every 2 s: it counts against the gateway's windows
    // too, and says when the sink is held back.
    let extra = "mode = \"gateway\"\naccess_token = \"GW\"\n\n[health]\ninterval = \"2s\"";
    let op = w.start(&tb_config(&w.site(), extra));
    // Per child (rateLimits) and for the gateway session (gatewayRateLimits).
    let child = ("6:1,60:3600", "3:1", "8:1,100:3600");
    let session = ("8:1,90:3600", "4:1,60:3600", "60:1,2000:3600");
    let limits = json!({
        "maxPayloadSize": 65536,
        "maxInflightMessages": 20,
        "rateLimits": {"messages": child.0, "telemetryMessages": child.1, "telemetryDataPoints": child.2},
        "gatewayRateLimits": {"messages": session.0, "telemetryMessages": session.1, "telemetryDataPoints": session.2},
    });
    answer_session_limits(&tb, w.up.port, limits).await;
    assert!(wait_until(Duration::from_secs(5), || op
        .log_text()
        .contains("ThingsBoard session limits received")));

    // 5 children, 12 readings each, 2 keys a reading: 120 data points, at
    // most 60 a second for the gateway and 8 a second per child; health
    // telemetry (about 35 keys every 2 s, cut to fit) shares the gateway's
    // windows, hourly ones included.
    let (children, each) = (5usize, 12usize);
    let mut msgs = Vec::new();
    for c in 0..children {
        for i in 0..each {
            msgs.push((
                format!("sensors/child-{c}/telemetry"),
                format!("{{\"seq\":{i},\"t\":{}}}", 20 + i).into_bytes(),
            ));
        }
    }
    assert_eq!(
        publish_all(w.port, "many-children", msgs).await,
        children * each
    );

    let mut saw_held = None;
    let arrived = wait_until(Duration::from_secs(60), || {
        if saw_held.is_none() {
            let st = op.status_json();
            if st["sinks"]["tb"]["held_back"].is_object() {
                saw_held = Some(st["sinks"]["tb"].clone());
            }
        }
        let got: usize = tb
            .all()
            .iter()
            .filter(|s| s.topic == "v1/gateway/telemetry")
            .map(|s| {
                s.json()
                    .as_object()
                    .map(|m| {
                        m.values()
                            .map(|e| e.as_array().map_or(0, Vec::len))
                            .sum::<usize>()
                    })
                    .unwrap_or(0)
            })
            .sum();
        got >= children * each
    });
    assert!(
        arrived,
        "every reading arrives; status {}\n{}",
        op.status_json(),
        op.log_text()
    );

    let sent: Vec<Counted> = tb.all().iter().filter_map(counted).collect();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let kinds = |pick: &dyn Fn(&Counted) -> Option<u64>| -> Vec<(Instant, u64)> {
        sent.iter()
            .filter_map(|c| pick(c).map(|n| (c.at, n)))
            .collect()
    };
    report.extend(check(
        "gateway",
        "messages",
        session.0,
        &kinds(&|_| Some(1)),
        &mut failures,
    ));
    report.extend(check(
        "gateway",
        "telemetry messages",
        session.1,
        &kinds(&|c| c.telemetry.then_some(1)),
        &mut failures,
    ));
    report.extend(check(
        "gateway",
        "data points",
        session.2,
        &kinds(&|c| c.telemetry.then_some(c.points)),
        &mut failures,
    ));
    let names: Vec<String> = (0..children).map(|c| format!("child-{c}")).collect();
    for name in &names {
        let of = |c: &Counted| c.children.iter().find(|(d, _)| d == name).map(|(_, p)| *p);
        report.extend(check(
            name,
            "messages",
            child.0,
            &kinds(&|c| of(c).map(|_| 1)),
            &mut failures,
        ));
        report.extend(check(
            name,
            "telemetry messages",
            child.1,
            &kinds(&|c| of(c).filter(|_| c.telemetry).map(|_| 1)),
            &mut failures,
        ));
        report.extend(check(
            name,
            "data points",
            child.2,
            &kinds(&|c| of(c).filter(|_| c.telemetry)),
            &mut failures,
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "windows over their limit:\n{}",
        failures.join("\n")
    );

    // In order per child, each reading once.
    let mut per_child: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in tb
        .all()
        .iter()
        .filter(|s| s.topic == "v1/gateway/telemetry")
    {
        for (d, entries) in s.json().as_object().cloned().unwrap_or_default() {
            for e in entries.as_array().cloned().unwrap_or_default() {
                per_child
                    .entry(d.clone())
                    .or_default()
                    .push(e["values"]["seq"].as_i64().unwrap_or(-1));
            }
        }
    }
    for name in &names {
        assert_eq!(
            per_child.get(name),
            Some(&(0..each as i64).collect::<Vec<_>>()),
            "{name}"
        );
    }
    let telemetry_messages = sent.iter().filter(|c| c.telemetry).count();
    assert!(
        telemetry_messages < children * each / 2,
        "several children per message saved budget: {telemetry_messages} messages for {} readings",
        children * each
    );
    let held = saw_held.expect("status said the sink was held back by a limit");
    let by = held["held_back"]["by"].as_str().unwrap_or_default();
    assert!(
        by.contains("telemetryDataPoints")
            || by.contains("telemetryMessages")
            || by.contains("messages"),
        "{held}"
    );
    assert!(
        held["drain_estimate_s"].is_u64() || held["queued"] == 0,
        "a drain estimate: {held}"
    );
    assert_eq!(
        op.status_json()["sinks"]["tb"]["undeliverable"],
        0,
        "nothing dead-lettered for a limit"
    );
}

/// A hang-up while the budget held outpost back is taken as the platform
/// enforcing its own count, not as a record it cannot take: the budget is
/// halved (up to three times) before the record sent first is blamed. The
/// fixture's mosquitto closes any connection that sends a packet over 700
/// bytes, so the big record here truly is poison: it must still end in the
/// dead letters, only after the budget had its chances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_the_limit_holds_outpost_back_halves_the_budget_before_a_record_is_blamed()
{
    let w = World::thingsboard("max_packet_size 700").await;
    let extra = "access_token = \"DEV\"\nrate_limits = \"2:1\"";
    let op = w.start(&tb_config(&w.site(), extra));
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(900));
    assert_eq!(
        publish_all(
            w.port,
            "big",
            vec![("sensors/big/telemetry".into(), big.into_bytes())]
        )
        .await,
        1
    );
    let dead = || outpost::store::dead_letters(&op.outbox()).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || !dead().is_empty()),
        "the record is found in the end; log:\n{}",
        op.log_text()
    );
    let log = op.log_text();
    let halvings = log.matches("sending at half the budget").count();
    assert_eq!(halvings, 3, "three halvings first:\n{log}");
    let blamed = log.find("moved to the dead letters").unwrap_or(0);
    let last_halving = log
        .rfind("sending at half the budget")
        .unwrap_or(usize::MAX);
    assert!(
        last_halving < blamed,
        "the budget was halved before the record was blamed:\n{log}"
    );
    assert!(
        dead()[0].reason.contains("closed the connection 3 times"),
        "{:?}",
        dead()
    );
    assert!(
        op.status_json()["sinks"]["tb"]["connects"].as_u64() >= Some(6),
        "six sessions: three halvings, three strikes: {}",
        op.status_json()
    );
}

/// ThingsBoard's limits for a device in the tenant profile its API shows
/// (`TenantProfileController`: `transportDeviceMsgRateLimit`,
/// `transportDeviceTelemetryMsgRateLimit` and
/// `transportDeviceTelemetryDataPointsRateLimit`, each "20:1,600:60").
const TB_DEVICE_LIMIT: &str = "20:1,600:60";

/// The slowest refill of [`TB_DEVICE_LIMIT`]: 600 per 60 s.
const REFILL_PER_S: f64 = 10.0;

/// After an outage, the backlog drains at the pace the server's token
/// buckets refill (`TbRateLimits`: bucket4j `refillGreedy`): the buckets
/// refuse nothing, readings keep arriving throughout, at no less than 90 %
/// of the refill rate once the burst capacity is spent, and live readings
/// are not held back behind the backlog. With windows taken as sliding
/// ones (before), a spent window held everything back until it slid: a
/// pause of about half the window here, about 57 minutes with an hourly
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_backlog_drains_at_the_servers_refill_rate_without_a_pause() {
    let w = World::thingsboard("").await;
    let tb = w.collect("v1/#").await;
    let op = w.start(&tb_config(&w.site(), "access_token = \"DEV\""));
    let limits = json!({
        "maxPayloadSize": 65536,
        "maxInflightMessages": 20,
        "rateLimits": {"messages": TB_DEVICE_LIMIT, "telemetryMessages": TB_DEVICE_LIMIT,
                       "telemetryDataPoints": TB_DEVICE_LIMIT},
    });
    answer_session_limits(&tb, w.up.port, limits.clone()).await;
    assert!(wait_until(Duration::from_secs(5), || op
        .log_text()
        .contains("ThingsBoard session limits received")));

    // The cloud goes away; 1,400 readings of one data point queue up.
    let fixture = w.tb.as_ref().expect("the ThingsBoard fixture");
    fixture.set_down(true);
    assert!(wait_until(Duration::from_secs(10), || op.status_json()
        ["sinks"]["tb"]["connected"]
        == false));
    let backlog = 1400usize;
    let msgs: Vec<(String, Vec<u8>)> = (0..backlog)
        .map(|i| {
            (
                "sensors/dev/telemetry".to_string(),
                format!("{{\"seq\":{i}}}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(publish_all(w.port, "backlog", msgs).await, backlog);

    // The cloud is back, a live sensor goes on at one reading a second, and
    // the new session is answered with the same limits.
    let requests_before = limit_requests(&tb);
    fixture.set_down(false);
    let back = Instant::now();
    let live_port = w.port;
    let live = tokio::spawn(async move {
        let msgs: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| {
                (
                    "sensors/live/telemetry".to_string(),
                    format!("{{\"live\":{i}}}").into_bytes(),
                )
            })
            .collect();
        publish_paced(live_port, "live", msgs, Some(Duration::from_secs(1))).await
    });
    assert!(
        wait_until(Duration::from_secs(15), || limit_requests(&tb)
            > requests_before),
        "outpost asks for its limits on the new session"
    );
    answer_latest_limits(&tb, w.up.port, limits).await;

    let seqs = || -> Vec<(Instant, i64)> {
        tb.all()
            .iter()
            .filter(|s| s.topic == "v1/devices/me/telemetry")
            .flat_map(|s| {
                let at = s.at;
                s.json()
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |e| e["values"]["seq"].as_i64().map(|n| (at, n)))
            })
            .collect()
    };
    let mut held = None;
    let drained = wait_until(Duration::from_secs(240), || {
        if held.is_none() {
            let s = op.status_json()["sinks"]["tb"].clone();
            if s["held_back"].is_object() && s["drain_estimate_s"].is_u64() {
                held = Some(s);
            }
        }
        seqs().len() >= backlog
    });
    live.abort();
    assert!(drained, "the backlog drains; status {}", op.status_json());

    // Nothing a bucket of the server's would refuse, over the whole run.
    let sent: Vec<Counted> = tb.all().iter().filter_map(counted).collect();
    let kinds = |pick: &dyn Fn(&Counted) -> Option<u64>| -> Vec<(Instant, u64)> {
        sent.iter()
            .filter_map(|c| pick(c).map(|n| (c.at, n)))
            .collect()
    };
    let mut failures = Vec::new();
    let mut report = Vec::new();
    report.extend(check(
        "device",
        "messages",
        TB_DEVICE_LIMIT,
        &kinds(&|_| Some(1)),
        &mut failures,
    ));
    report.extend(check(
        "device",
        "telemetry messages",
        TB_DEVICE_LIMIT,
        &kinds(&|c| c.telemetry.then_some(1)),
        &mut failures,
    ));
    report.extend(check(
        "device",
        "data points",
        TB_DEVICE_LIMIT,
        &kinds(&|c| c.telemetry.then_some(c.points)),
        &mut failures,
    ));

    // The drain: from the first telemetry after the cloud came back to the
    // last backlog reading.
    let drain: Vec<(Instant, u64)> = kinds(&|c| c.telemetry.then_some(c.points))
        .into_iter()
        .filter(|(at, _)| *at >= back)
        .collect();
    let first = drain
        .first()
        .map(|(t, _)| *t)
        .expect("telemetry after the outage");
    let last = seqs()
        .iter()
        .map(|(t, _)| *t)
        .max()
        .expect("backlog readings");
    let in_drain: Vec<(Instant, u64)> = drain.into_iter().filter(|(t, _)| *t <= last).collect();
    let longest_gap = in_drain
        .windows(2)
        .map(|p| p[1].0.duration_since(p[0].0))
        .max()
        .unwrap_or_default();
    // Once the 60-s bucket's 600 tokens could be spent, the refill alone
    // sets the pace.
    let steady_from = first + Duration::from_secs(70);
    let steady_points: u64 = in_drain
        .iter()
        .filter(|(t, _)| *t >= steady_from)
        .map(|(_, p)| p)
        .sum();
    let steady_s = last.saturating_duration_since(steady_from).as_secs_f64();
    let total_points: u64 = in_drain.iter().map(|(_, p)| p).sum();
    let drain_s = last.duration_since(first).as_secs_f64();
    eprintln!(
        "{}\ndrain: {total_points} points in {drain_s:.1} s ({:.2}/s); steady part: {steady_points} points in {steady_s:.1} s ({:.2}/s, refill {REFILL_PER_S}/s); longest gap {longest_gap:?}",
        report.join("\n"),
        total_points as f64 / drain_s,
        steady_points as f64 / steady_s.max(f64::EPSILON),
    );
    assert!(
        failures.is_empty(),
        "the server would have refused:\n{}",
        failures.join("\n")
    );
    assert!(
        longest_gap <= Duration::from_secs(5),
        "readings stopped for {longest_gap:?} during the drain"
    );
    assert!(
        steady_s >= 15.0,
        "a steady part long enough to measure: {steady_s:.1} s"
    );
    assert!(
        steady_points as f64 >= 0.9 * REFILL_PER_S * steady_s,
        "{steady_points} points in {steady_s:.1} s: below 90 % of the refill rate"
    );

    // Live readings went on arriving during the drain.
    let live_during: usize = tb
        .all()
        .iter()
        .filter(|s| s.topic == "v1/devices/me/telemetry" && s.at >= first && s.at <= last)
        .map(|s| {
            s.json().as_array().map_or(0, |a| {
                a.iter()
                    .filter(|e| e["values"].get("live").is_some())
                    .count()
            })
        })
        .sum();
    assert!(
        live_during as f64 >= 0.5 * drain_s,
        "{live_during} live readings arrived in a {drain_s:.0}-s drain"
    );
    let held = held.expect("status showed the sink held back, with a drain estimate");
    assert!(
        held["held_back"]["by"]
            .as_str()
            .is_some_and(|b| !b.is_empty()),
        "{held}"
    );
    assert_eq!(op.status_json()["sinks"]["tb"]["undeliverable"], 0);
}

fn limit_requests(tb: &Collector) -> usize {
    tb.all()
        .iter()
        .filter(|s| {
            s.topic.starts_with("v1/devices/me/rpc/request/")
                && s.json()["method"] == "getSessionLimits"
        })
        .count()
}

/// Answers the newest `getSessionLimits` request.
async fn answer_latest_limits(tb: &Collector, port: u16, limits: Value) {
    let id = tb
        .all()
        .iter()
        .rev()
        .find(|s| {
            s.topic.starts_with("v1/devices/me/rpc/request/")
                && s.json()["method"] == "getSessionLimits"
        })
        .map(|s| s.topic.rsplit('/').next().unwrap_or_default().to_string())
        .expect("a request");
    crate::thingsboard::platform_sends(port, &format!("v1/devices/me/rpc/response/{id}"), limits)
        .await;
}
