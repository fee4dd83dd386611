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

#[test]
fn waits_when_a_window_is_full() {
    let mut b = Budget::new(BudgetSpec::messages(
        &RateSpec::parse("3:1,5:10").expect("parse"),
    ));
    let t0 = Instant::now();
    for i in 0..3 {
        assert_eq!(b.next_allowed(t0, &Cost::message()), None, "message {i}");
        b.record(t0, &Cost::message());
    }
    let held = b.next_allowed(t0, &Cost::message()).expect("held");
    assert_eq!(held.until, t0 + Duration::from_secs(1));
    assert_eq!(held.by, "messages 3:1");
    let t1 = t0 + Duration::from_secs(1);
    for _ in 0..2 {
        assert_eq!(b.next_allowed(t1, &Cost::message()), None);
        b.record(t1, &Cost::message());
    }
    // Five in ten seconds: the next one waits for the first to age out.
    let held = b.next_allowed(t1, &Cost::message()).expect("held");
    assert_eq!(held.until, t0 + Duration::from_secs(10));
    assert_eq!(held.by, "messages 5:10");
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
    // 12 in the minute: 6 more would be 18 > 15.
    let held = b.next_allowed(t1, &tel(6)).expect("minute window");
    assert_eq!(held.by, "telemetryDataPoints 15:60");
    assert_eq!(held.until, t0 + Duration::from_secs(60));
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
fn memory_is_bounded_and_merging_never_lets_more_through() {
    let mut b = Budget::new(BudgetSpec {
        session: spec("", "", "1000000:3600"),
        child: None,
    });
    let t0 = Instant::now();
    for i in 0..(3 * MAX_REMEMBERED as u64) {
        let at = t0 + Duration::from_millis(i);
        b.record(at, &tel(10));
    }
    assert!(b.session.points.events.len() <= MAX_REMEMBERED);
    let total: u64 = b.session.points.events.iter().map(|(_, c)| c).sum();
    assert_eq!(
        total,
        30 * MAX_REMEMBERED as u64,
        "nothing is forgotten early"
    );
    let later = t0 + Duration::from_secs(60);
    assert_eq!(b.next_allowed(later, &tel(10)), None);
    assert!(b.next_allowed(later, &tel(1_000_000)).is_some());
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

mod sliding {
    use super::*;

    /// The running sums agree with counting every event by hand, through
    /// events leaving the windows and merges.
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

    #[test]
    fn running_sums_match_a_full_count() {
        let mut m = Meter::new(&RateSpec::parse("50:1,400:10").expect("spec"), "messages");
        let t0 = Instant::now();
        let mut all: Vec<(Instant, u64)> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 0..5_000u64 {
            let now = t0 + Duration::from_millis(step * 7);
            let cost = rng.u64(1..5);
            m.advance(now);
            for w in &m.windows {
                let by_hand: u64 = all
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) < w.len)
                    .map(|(_, c)| c)
                    .sum();
                assert_eq!(w.sum, by_hand, "step {step}, window {}", w.name);
            }
            m.record(now, cost);
            all.push((now, cost));
        }
        assert!(
            m.events.len() < 2_000,
            "old events are dropped: {}",
            m.events.len()
        );
    }
}
