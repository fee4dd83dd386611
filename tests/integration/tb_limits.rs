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
    let w = World::new("");
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
    let w = World::new("max_packet_size 700");
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
