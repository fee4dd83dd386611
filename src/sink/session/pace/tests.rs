//! The budget's tests: windows, weights, scopes, bounds, halvings.

use super::*;

fn spec(m: &str, t: &str, p: &str) -> Limits {
    Limits {
        messages: RateSpec::parse(m).expect("m"),
        telemetry_messages: RateSpec::parse(t).expect("t"),
        telemetry_points: RateSpec::parse(p).expect("p"),
    }
}

fn tel(points: u64) -> Cost {
    Cost {
        telemetry: true,
        points,
        children: Vec::new(),
    }
}

/// ThingsBoard's bucket as the server keeps it (bucket4j `refillGreedy`,
/// full at the start, N every `secs`, no margin): what it would admit.
struct Server {
    cap: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Server {
    fn new(n: u64, secs: u64, t0: Instant) -> Server {
        Server {
            cap: n as f64,
            rate: n as f64 / secs as f64,
            tokens: n as f64,
            at: t0,
        }
    }

    /// Takes `cost` at `t`; false if the server would refuse it.
    fn admit(&mut self, t: Instant, cost: u64) -> bool {
        self.tokens =
            (self.tokens + t.duration_since(self.at).as_secs_f64() * self.rate).min(self.cap);
        self.at = t;
        self.tokens -= cost as f64;
        self.tokens > -1e-6
    }
}

#[test]
fn a_burst_takes_the_bucket_then_messages_go_at_the_refill_rate() {
    let mut b = Budget::new(BudgetSpec::messages(
        &RateSpec::parse("3:1").expect("parse"),
    ));
    let t0 = Instant::now();
    for i in 0..3 {
        assert_eq!(b.next_allowed(t0, &Cost::message()), None, "message {i}");
        b.record(t0, &Cost::message());
    }
    let held = b.next_allowed(t0, &Cost::message()).expect("held");
    assert_eq!(held.by, "messages 3:1");
    // One token comes back in 1/3 s (outpost counts on 95 % of that rate).
    let wait = held.until.duration_since(t0).as_secs_f64();
    assert!((0.33..0.36).contains(&wait), "{wait}");
    assert_eq!(b.next_allowed(held.until, &Cost::message()), None);
}

/// The case: an hourly budget spent by a burst after an outage.
/// A sliding window held everything back for most of an hour; the bucket
/// lets readings through at its refill rate at once.
#[test]
fn after_an_hourly_budget_is_spent_readings_flow_at_its_refill_rate_not_an_hour_later() {
    let mut b = Budget::new(BudgetSpec::messages(
        &RateSpec::parse("12000:3600").expect("parse"),
    ));
    let t0 = Instant::now();
    for _ in 0..12_000 {
        b.record(t0, &Cost::message());
    }
    let held = b.next_allowed(t0, &Cost::message()).expect("spent");
    assert!(
        held.until.duration_since(t0) < Duration::from_secs(1),
        "{held:?}"
    );
    // In the next minute: about 60 × 3.33 × 0.95 go.
    let mut sent = 0;
    let mut t = t0;
    let end = t0 + Duration::from_secs(60);
    while t < end {
        match b.next_allowed(t, &Cost::message()) {
            None => {
                b.record(t, &Cost::message());
                sent += 1;
            }
            Some(h) => t = h.until,
        }
    }
    assert!(
        (180..=200).contains(&sent),
        "{sent} in the minute after the burst"
    );
}

/// Whatever outpost sends when its budget says so, ThingsBoard's own
/// buckets admit, and the long-run rate is no less than 90 % of theirs.
#[test]
fn the_server_s_buckets_admit_everything_sent_at_no_less_than_90_percent_of_their_rate() {
    let limits = "5:1,100:60";
    let mut b = Budget::new(BudgetSpec {
        session: spec(limits, "", "40:1,900:60"),
        child: None,
    });
    let t0 = Instant::now();
    let mut servers = [Server::new(5, 1, t0), Server::new(100, 60, t0)];
    let mut points_server = [Server::new(40, 1, t0), Server::new(900, 60, t0)];
    let mut t = t0;
    let mut messages = 0u64;
    let mut n = 0u64;
    while t < t0 + Duration::from_secs(600) {
        // Costs of 1 to 12 data points, as batches of readings are.
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cost = tel(1 + (n >> 33) % 12);
        match b.next_allowed(t, &cost) {
            None => {
                b.record(t, &cost);
                for s in &mut servers {
                    assert!(s.admit(t, 1), "the server refused message {messages}");
                }
                for s in &mut points_server {
                    assert!(
                        s.admit(t, cost.points),
                        "the server refused the points of {messages}"
                    );
                }
                messages += 1;
            }
            Some(h) => t = h.until.max(t + Duration::from_micros(1)),
        }
    }
    // The binding limit is 100 messages a minute or 900 points a minute
    // (6.5 points on average: ~138 messages): 100 a minute after the
    // first minute's burst of 100.
    let per_minute = (messages - 100) as f64 / 9.0;
    assert!(
        per_minute >= 90.0,
        "{per_minute:.1} messages a minute after the burst"
    );
}

#[test]
fn data_points_are_weighed_and_only_telemetry_counts_against_them() {
    let mut b = Budget::new(BudgetSpec {
        session: spec("100:1", "100:1", "10:1,15:60"),
        child: None,
    });
    let t0 = Instant::now();
    assert_eq!(b.next_allowed(t0, &tel(6)), None);
    b.record(t0, &tel(6));
    let held = b.next_allowed(t0, &tel(6)).expect("6 + 6 > 10");
    assert_eq!(held.by, "telemetryDataPoints 10:1");
    assert_eq!(b.next_allowed(t0, &tel(4)), None, "6 + 4 fits");
    assert_eq!(b.next_allowed(t0, &Cost::message()), None, "not telemetry");
    let t1 = t0 + Duration::from_secs(1);
    b.record(t1, &tel(6));
    // 12 of the minute's 15 spent (the minute bucket refills 0.25 a
    // second): 6 more wait for the minute bucket.
    let held = b.next_allowed(t1, &tel(6)).expect("minute bucket");
    assert_eq!(held.by, "telemetryDataPoints 15:60");
}

#[test]
fn each_child_has_its_own_windows_beside_the_gateways() {
    let mut b = Budget::new(BudgetSpec {
        session: spec("100:1", "", "50:1"),
        child: Some(spec("2:1", "", "5:1")),
    });
    let t0 = Instant::now();
    let ab = Cost {
        telemetry: true,
        points: 6,
        children: vec![("A".into(), 3), ("B".into(), 3)],
    };
    assert_eq!(b.next_allowed(t0, &ab), None);
    b.record(t0, &ab);
    let again = b.next_allowed(t0, &ab).expect("3 + 3 > 5 for each child");
    assert!(again.by.ends_with("of child A"), "{again:?}");
    let c = Cost {
        telemetry: true,
        points: 5,
        children: vec![("C".into(), 5)],
    };
    assert_eq!(b.next_allowed(t0, &c), None, "another child is not held");
    let a_msg = Cost {
        telemetry: false,
        points: 0,
        children: vec![("A".into(), 0)],
    };
    b.record(t0, &a_msg);
    let held = b.next_allowed(t0, &a_msg).expect("two messages of A");
    assert_eq!(held.by, "messages 2:1 of child A");
}

#[test]
fn the_long_run_rate_follows_the_strictest_window() {
    let b = Budget::new(BudgetSpec {
        session: spec("100:1,3000:60", "", "200:1"),
        child: None,
    });
    // 4 points a record: 200/4 = 50 records a second.
    let r = b.records_per_second(10.0, 4.0).expect("limited");
    assert!((r - 50.0).abs() < 1e-9, "{r}");
    assert_eq!(Budget::none().records_per_second(1.0, 1.0), None);
}

mod buckets {
    use super::*;

    #[test]
    fn a_tightened_budget_lets_half_through_and_relaxes_after_calm() {
        let mut b = Budget::new(BudgetSpec::messages(&RateSpec::parse("8:1").expect("spec")));
        let t0 = Instant::now();
        assert!(b.tighten());
        for i in 0..4 {
            assert_eq!(b.next_allowed(t0, &Cost::message()), None, "message {i}");
            b.record(t0, &Cost::message());
        }
        assert!(
            b.next_allowed(t0, &Cost::message()).is_some(),
            "4 of 8 at one halving"
        );
        assert!(b.tighten() && b.tighten());
        assert!(!b.tighten(), "at most {MAX_SHIFT} halvings");
        for _ in 0..CALM_ACKS {
            b.acked();
        }
        assert_eq!(b.shift(), MAX_SHIFT - 1);
        assert!(
            !Budget::none().clone().tighten(),
            "nothing to tighten without a limit"
        );
    }

    #[test]
    fn new_windows_keep_what_was_sent() {
        let t0 = Instant::now();
        let mut old = Budget::new(BudgetSpec::messages(
            &RateSpec::parse("100:1").expect("spec"),
        ));
        for _ in 0..5 {
            old.record(t0, &Cost::message());
        }
        let mut new = Budget::new(BudgetSpec::messages(&RateSpec::parse("6:1").expect("spec")));
        new.inherit(old);
        assert_eq!(new.next_allowed(t0, &Cost::message()), None, "5 + 1 fits");
        new.record(t0, &Cost::message());
        assert!(
            new.next_allowed(t0, &Cost::message()).is_some(),
            "the 5 still count"
        );
    }
}
