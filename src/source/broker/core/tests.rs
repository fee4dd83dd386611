use super::*;
use crate::source::broker::codec::{V311, V5};
use crate::source::broker::session::Message;

fn join(core: &mut Core, id: &str, level: u8, clean: bool) -> Joined {
    join_as(core, id, None, level, clean)
}

fn join_as(core: &mut Core, id: &str, user: Option<&str>, level: u8, clean: bool) -> Joined {
    core.join(Join {
        client_id: Arc::from(id),
        level,
        clean,
        expiry: (!clean).then_some(Duration::from_secs(3600)),
        receive_max: 10,
        max_packet: None,
        will: None,
        username: user.map(Arc::from),
        owner: user.map_or(Owner::Address([127, 0, 0, 1].into()), |u| {
            Owner::User(Arc::from(u))
        }),
        keep_alive: Duration::ZERO,
    })
}

fn opts(qos: u8) -> SubOpts {
    SubOpts {
        qos,
        ..SubOpts::default()
    }
}

fn client(id: &str) -> Subscriber {
    Subscriber::Client(Arc::from(id))
}

fn msg(topic: &str, qos: u8, retain: bool) -> Arc<Message> {
    Arc::new(Message::new(topic, b"x".to_vec().into(), qos, retain))
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_while_away() {
    let mut core = Core::new(Limits::default(), None);
    let j = join(&mut core, "s1", V311, false);
    assert!(!j.session_present);
    assert_eq!(
        core.subscribe(&client("s1"), &[("a/#".into(), opts(1))], None),
        [1]
    );
    core.leave(&Arc::from("s1"), j.conn_id, false, None);
    assert_eq!(core.publish(msg("a/b", 1, false)), 1, "queued while away");
    assert_eq!(core.publish(msg("a/c", 0, false)), 0, "QoS 0 is not kept");
    let j2 = join(&mut core, "s1", V311, false);
    assert!(j2.session_present);
    let out = core.outgoing(&Arc::from("s1"), j2.conn_id);
    assert_eq!(out.len(), 1);
    // A clean connect throws the session away, subscriptions included.
    let j3 = join(&mut core, "s1", V311, true);
    assert!(!j3.session_present);
    assert_eq!(core.stats().subscriptions, 0);
}

#[test]
fn a_takeover_kicks_the_old_connection_and_its_leave_is_ignored() {
    let mut core = Core::new(Limits::default(), None);
    let a = join(&mut core, "dup", V311, true);
    let b = join(&mut core, "dup", V5, true);
    assert_ne!(a.conn_id, b.conn_id);
    // The old connection ends after the takeover: the new one is unharmed.
    assert!(core
        .leave(&Arc::from("dup"), a.conn_id, true, None)
        .is_none());
    assert_eq!(core.stats().connected, 1);
    assert!(core.reconnected(&Arc::from("dup"), a.conn_id));
    assert_eq!(
        core.must_end(&Arc::from("dup"), a.conn_id, Instant::now()),
        Some(Ending::TakenOver),
        "the old connection, woken, learns it was taken over"
    );
    assert_eq!(
        core.must_end(&Arc::from("dup"), b.conn_id, Instant::now()),
        None
    );
}

/// MQTT-3.1.2-24: silent for 1.5 keep-alives, the connection ends; any
/// packet starts the count again; keep-alive 0 never runs out. The sweep
/// wakes only the silent connection.
#[test]
fn a_client_silent_for_one_and_a_half_keep_alives_is_ended_by_the_sweep() {
    use futures_util::FutureExt;
    let mut core = Core::new(Limits::default(), None);
    let mut j = join(&mut core, "quiet", V311, true);
    let keep = Duration::from_secs(10);
    let t0 = Instant::now();
    let link = Arc::new(Link::new(keep, t0));
    let mut busy = join(&mut core, "busy", V311, true);
    let busy_link = Arc::new(Link::new(keep, t0));
    for (id, joined, l) in [("quiet", &mut j, &link), ("busy", &mut busy, &busy_link)] {
        if let Some(live) = core.sessions.get_mut(id).and_then(|s| s.live.as_mut()) {
            live.link = l.clone();
        }
        joined.link = l.clone();
    }
    let quiet = Arc::<str>::from("quiet");
    let t = |ms: u64| t0 + Duration::from_millis(ms);
    assert_eq!(core.must_end(&quiet, j.conn_id, t(14_999)), None);
    assert_eq!(
        core.must_end(&quiet, j.conn_id, t(15_000)),
        Some(Ending::KeepAlive)
    );
    busy_link.heard(t(10_000));
    core.wake_overdue(t(15_000));
    assert!(
        link.woken().now_or_never().is_some(),
        "the silent one woken"
    );
    assert!(
        busy_link.woken().now_or_never().is_none(),
        "the one heard from is left alone"
    );
    assert_eq!(
        core.must_end(&Arc::from("busy"), busy.conn_id, t(24_999)),
        None
    );
    let never = Link::new(Duration::ZERO, t0);
    assert!(!never.overdue(t(86_400_000)), "keep-alive 0: no limit");
}

#[test]
fn overlapping_subscriptions_give_311_one_copy_and_5_one_per_subscription() {
    let mut core = Core::new(Limits::default(), None);
    let a = join(&mut core, "v4", V311, true);
    let b = join(&mut core, "v5", V5, true);
    for who in ["v4", "v5"] {
        core.subscribe(
            &client(who),
            &[("a/#".into(), opts(0)), ("a/+".into(), opts(1))],
            None,
        );
    }
    core.publish(msg("a/b", 1, false));
    let four = core.outgoing(&Arc::from("v4"), a.conn_id);
    let five = core.outgoing(&Arc::from("v5"), b.conn_id);
    assert_eq!(four.len(), 1);
    assert!(matches!(&four[0], Out::Publish { delivery, .. } if delivery.qos == 1));
    assert_eq!(five.len(), 2);
}

#[test]
fn subscriptions_are_bounded_per_client_and_in_total() {
    let limits = Limits {
        max_subscriptions_per_client: 2,
        max_subscriptions: 3,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    join(&mut core, "a", V5, true);
    join(&mut core, "b", V311, true);
    let f = |s: &str| (s.to_string(), opts(0));
    assert_eq!(
        core.subscribe(&client("a"), &[f("1"), f("2"), f("3")], None),
        [0, 0, SUB_QUOTA_EXCEEDED]
    );
    assert_eq!(
        core.subscribe(&client("b"), &[f("x"), f("y")], None),
        [0, SUB_FAILURE_311]
    );
    // Subscribing again to a filter it has is not a new one.
    assert_eq!(core.subscribe(&client("a"), &[f("1")], None), [0]);
}

#[test]
fn retained_messages_reach_new_subscribers_with_retain_set() {
    let mut core = Core::new(Limits::default(), None);
    core.publish(msg("r/1", 1, true));
    let j = join(&mut core, "late", V311, true);
    core.subscribe(&client("late"), &[("r/#".into(), opts(1))], None);
    let out = core.outgoing(&Arc::from("late"), j.conn_id);
    assert!(matches!(&out[0], Out::Publish { delivery, .. } if delivery.retain));
    // Forwarded live, RETAIN is cleared (no retain-as-published).
    core.publish(msg("r/1", 1, true));
    let out = core.outgoing(&Arc::from("late"), j.conn_id);
    assert!(matches!(&out[0], Out::Publish { delivery, .. } if !delivery.retain));
}

#[test]
fn a_shared_group_member_alone_with_an_unacked_message_can_leave_and_return() {
    // The case that panicked rumqttd's router ("group must exists").
    let mut core = Core::new(Limits::default(), None);
    let j = join(&mut core, "g1", V5, false);
    core.subscribe(&client("g1"), &[("$share/g/s/+".into(), opts(1))], None);
    core.publish(msg("s/1", 1, false));
    assert_eq!(core.outgoing(&Arc::from("g1"), j.conn_id).len(), 1);
    core.leave(&Arc::from("g1"), j.conn_id, false, None);
    core.publish(msg("s/2", 1, false));
    let j2 = join(&mut core, "g1", V5, false);
    assert_eq!(j2.resend.len(), 1, "the unacked one again");
    assert_eq!(core.outgoing(&Arc::from("g1"), j2.conn_id).len(), 1);
    core.unsubscribe(&client("g1"), &["$share/g/s/+".into()]);
    assert_eq!(core.publish(msg("s/3", 1, false)), 0);
}

#[test]
fn offline_sessions_are_bounded_and_expire() {
    let limits = Limits {
        max_offline_sessions: 2,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    for i in 0..5 {
        let id = format!("c{i}");
        let j = join(&mut core, &id, V311, false);
        core.leave(&Arc::from(id.as_str()), j.conn_id, false, None);
    }
    assert_eq!(core.stats().sessions, 2);
    core.sweep(Instant::now() + Duration::from_secs(7200));
    assert_eq!(core.stats().sessions, 0);
}

#[test]
fn internal_clients_get_messages_and_leave_nothing_behind() {
    let mut core = Core::new(Limits::default(), None);
    let (tx, mut rx) = mpsc::channel(4);
    let id = core.add_internal(tx);
    core.subscribe(
        &Subscriber::Internal(id),
        &[("d/+/rpc".into(), opts(1))],
        None,
    );
    core.publish(msg("d/x/rpc", 1, false));
    assert_eq!(rx.try_recv().map(|m| m.topic).ok(), Some("d/x/rpc".into()));
    core.remove_internal(id);
    assert_eq!(core.stats().subscriptions, 0);
}

fn queued_topics(core: &mut Core, id: &str, conn: u64) -> Vec<String> {
    core.outgoing(&Arc::from(id), conn)
        .into_iter()
        .filter_map(|o| match o {
            Out::Publish { delivery, .. } => Some(delivery.msg.topic.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_acl_decides_what_each_subscriber_gets_retained_shared_and_after_a_takeover() {
    let acl = crate::access::Acl::parse(
        "pattern read devices/%u/#\nuser all\ntopic read #\n",
        std::path::Path::new("acl"),
    )
    .expect("acl");
    let mut core = Core::new(Limits::default(), Some(Arc::new(acl)));
    core.publish(msg("devices/a/attributes", 1, true));
    core.publish(msg("devices/b/attributes", 1, true));
    let a = join_as(&mut core, "ca", Some("a"), V5, false);
    core.subscribe(&client("ca"), &[("#".into(), opts(1))], None);
    assert_eq!(
        queued_topics(&mut core, "ca", a.conn_id),
        ["devices/a/attributes"]
    );
    core.publish(msg("devices/b/rpc/request/1", 1, false));
    core.publish(msg("devices/a/rpc/request/2", 1, false));
    assert_eq!(
        queued_topics(&mut core, "ca", a.conn_id),
        ["devices/a/rpc/request/2"]
    );

    // A shared group: the message goes to a member that may read it.
    let b = join_as(&mut core, "cb", Some("b"), V5, true);
    for id in ["ca", "cb"] {
        core.subscribe(
            &client(id),
            &[("$share/g/devices/+/x".into(), opts(1))],
            None,
        );
    }
    for _ in 0..4 {
        core.publish(msg("devices/b/x", 1, false));
    }
    assert_eq!(
        queued_topics(&mut core, "ca", a.conn_id),
        Vec::<String>::new()
    );
    assert_eq!(queued_topics(&mut core, "cb", b.conn_id).len(), 4);

    // Away, then back under another name: what that name may not read goes.
    core.leave(&Arc::from("ca"), a.conn_id, false, None);
    core.publish(msg("devices/a/rpc/request/3", 1, false));
    let back = join_as(&mut core, "ca", Some("b"), V5, false);
    assert!(back.session_present);
    assert!(queued_topics(&mut core, "ca", back.conn_id).is_empty());
}

fn with_will(id: &str, clean: bool, expiry: Option<u64>, delay: u64) -> Join {
    Join {
        client_id: Arc::from(id),
        level: V5,
        clean,
        expiry: expiry.map(Duration::from_secs),
        receive_max: 10,
        max_packet: None,
        will: Some(PendingWill {
            will: crate::source::broker::codec::Will {
                topic: format!("{id}/gone"),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: 1,
                retain: false,
                props: Default::default(),
            },
            delay: Duration::from_secs(delay),
        }),
        username: None,
        owner: Owner::Address([127, 0, 0, 1].into()),
        keep_alive: Duration::ZERO,
    }
}

/// MQTT 5 §3.14.2.2.2: the Session Expiry Interval of a DISCONNECT
/// replaces the CONNECT's; zero ends the session with the connection.
#[test]
fn a_disconnect_lengthens_or_ends_the_session() {
    let mut core = Core::new(Limits::default(), None);
    let id: Arc<str> = Arc::from("sleepy");
    let j = core.join(with_will("sleepy", false, Some(10), 0));
    core.subscribe(&client("sleepy"), &[("cmd/#".into(), opts(1))], None);
    core.leave(&id, j.conn_id, false, Some(Duration::from_secs(7200)));
    core.sweep(Instant::now() + Duration::from_secs(60));
    assert_eq!(
        core.publish(msg("cmd/open", 1, false)),
        1,
        "kept past the CONNECT's 10 s"
    );
    let j = join(&mut core, "sleepy", V5, false);
    assert!(j.session_present);
    core.leave(&id, j.conn_id, false, Some(Duration::ZERO));
    assert_eq!(core.stats().sessions, 0, "ended with the connection");
    assert_eq!(
        core.publish(msg("cmd/open", 1, false)),
        0,
        "nothing queued for it"
    );
}

/// MQTT 5 §3.1.3.2.2: the will goes when its delay has passed or the
/// session ends, whichever is first.
#[test]
fn a_will_delay_longer_than_the_session_is_cut_to_the_session() {
    let mut core = Core::new(Limits::default(), None);
    let j = core.join(with_will("w1", true, Some(2), 10));
    let will = core
        .leave(&Arc::from("w1"), j.conn_id, true, None)
        .expect("a will");
    assert_eq!(will.delay, Duration::from_secs(2));
    let j = core.join(with_will("w2", true, None, 10));
    let will = core
        .leave(&Arc::from("w2"), j.conn_id, true, None)
        .expect("a will");
    assert_eq!(will.delay, Duration::ZERO, "no session to outlive");
    let j = core.join(with_will("w3", true, Some(3600), 10));
    let will = core
        .leave(&Arc::from("w3"), j.conn_id, true, None)
        .expect("a will");
    assert_eq!(will.delay, Duration::from_secs(10));
}

/// MQTT 5 §3.1.4-3 with §3.1.2.5: a connection taken over leaves its will
/// when its session ends (clean start) or it had no delay; with a delay
/// and the session going on, the client is back in time and it is not
/// sent.
#[test]
fn a_takeover_publishes_the_old_wills_that_are_due() {
    let mut core = Core::new(Limits::default(), None);
    core.join(with_will("t1", false, Some(3600), 30));
    let j = core.join(with_will("t1", true, Some(3600), 30));
    let t = j.taken_will.expect("clean start: the old session ended");
    assert_eq!(t.will.delay, Duration::ZERO);
    assert_eq!(t.will.will.topic, "t1/gone");
    core.join(with_will("t2", false, Some(3600), 0));
    assert!(
        core.join(with_will("t2", false, Some(3600), 0))
            .taken_will
            .is_some(),
        "no delay"
    );
    core.join(with_will("t3", false, Some(3600), 30));
    assert!(
        core.join(with_will("t3", false, Some(3600), 30))
            .taken_will
            .is_none(),
        "back within the delay"
    );
}

/// An offline session past its expiry is not resumed, even before the
/// sweep has run.
#[test]
fn an_expired_session_is_not_resumed_between_sweeps() {
    let mut core = Core::new(Limits::default(), None);
    let j = core.join(with_will("e1", false, Some(1), 0));
    core.leave(&Arc::from("e1"), j.conn_id, false, None);
    if let Some(s) = core.sessions.get_mut("e1") {
        s.disconnected_at = Instant::now().checked_sub(Duration::from_secs(2));
    }
    let again = join(&mut core, "e1", V5, false);
    assert!(!again.session_present, "expired a second ago");
}

/// A reload that takes a user's login away ends its connection and its
/// session; one that changes the ACL drops what was queued and may no
/// longer be read.
#[test]
fn revoked_logins_end_and_queued_messages_follow_the_new_acl() {
    let mut core = Core::new(Limits::default(), None);
    let a = join_as(&mut core, "a", Some("alice"), V5, false);
    join_as(&mut core, "b", Some("bob"), V5, false);
    core.subscribe(&client("b"), &[("cmd/#".into(), opts(1))], None);
    let b = Arc::<str>::from("b");
    let joined_b = core
        .sessions
        .get(&b)
        .and_then(|s| s.live.as_ref())
        .map(|l| l.id);
    core.leave(&b, joined_b.unwrap_or_default(), false, None);
    assert_eq!(core.publish(msg("cmd/open", 1, false)), 1, "queued for bob");
    let acl = crate::access::Acl::parse(
        "user bob\ntopic read other/#\n",
        std::path::Path::new("acl"),
    )
    .expect("acl");
    core.set_acl(Some(Arc::new(acl)));
    assert_eq!(
        core.stats().queued,
        0,
        "no longer readable: not delivered later"
    );
    assert_eq!(core.revoke(&["alice".to_string()]), 1);
    assert_eq!(
        core.must_end(&Arc::from("a"), a.conn_id, Instant::now()),
        Some(Ending::Revoked)
    );
    core.leave(&Arc::from("a"), a.conn_id, false, None);
    assert!(!core.sessions.contains_key("a"), "its session ends too");
}

/// The queued-bytes bound is shared per owner: a flood spread over many
/// small sessions of one address gives way to a sensor whose one session
/// holds more than any of them but less than their owner altogether.
#[test]
fn queue_space_is_taken_from_the_owner_with_the_most_not_the_biggest_session() {
    let size = msg("cmd/sensor", 1, false).size();
    let limits = Limits {
        max_queued_bytes_total: size * 12,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    let away = |core: &mut Core, id: &str, owner: &str, filter: &str| {
        let j = join_owned(core, id, owner, false);
        core.subscribe(&client(id), &[(filter.into(), opts(1))], None);
        core.leave(&Arc::from(id), j.conn_id, false, None);
    };
    for i in 0..4 {
        away(
            &mut core,
            &format!("junk-{i}"),
            "address 10.0.0.9",
            &format!("junk/{i}/abc"),
        );
    }
    away(&mut core, "sensor", "address 10.0.0.2", "cmd/sensor");
    for i in 0..4 {
        for _ in 0..2 {
            core.publish(msg(&format!("junk/{i}/abc"), 1, false));
        }
    }
    for _ in 0..4 {
        core.publish(msg("cmd/sensor", 1, false));
    }
    assert_eq!(core.queued_total(), size * 12, "full: junk 8, sensor 4");
    assert_eq!(
        core.publish(msg("cmd/sensor", 1, false)),
        1,
        "the sensor's fifth command is kept"
    );
    let sensor = core.sessions.get("sensor").map(|s| s.queue.len());
    assert_eq!(sensor, Some(5), "its biggest session is not what gives way");
    let junk: usize = (0..4)
        .filter_map(|i| core.sessions.get(format!("junk-{i}").as_str()))
        .map(|s| s.queue.len())
        .sum();
    assert_eq!(junk, 7, "the junk owner gave up its oldest message");
    assert!(core.queued_total() <= size * 12);
}

/// The queued bytes of all sessions are bounded together; at the bound the
/// owner with the most queued gives up its oldest, and a client of another
/// owner with little queued still gets its command.
#[test]
fn a_flooded_session_cannot_take_the_queue_space_of_the_others() {
    let size = msg("flood/x", 1, false).size();
    let limits = Limits {
        max_queued_bytes_total: size * 10,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    for (id, owner) in [("greedy", "address 10.0.0.9"), ("valve", "user valve")] {
        let j = join_owned(&mut core, id, owner, false);
        let filter = if id == "greedy" {
            "flood/#"
        } else {
            "cmd/valve"
        };
        core.subscribe(&client(id), &[(filter.into(), opts(1))], None);
        core.leave(&Arc::from(id), j.conn_id, false, None);
    }
    for _ in 0..50 {
        core.publish(msg("flood/x", 1, false));
    }
    assert_eq!(
        core.queued_total(),
        size * 10,
        "the flood fills the total, no more"
    );
    assert_eq!(
        core.publish(msg("cmd/valve", 1, false)),
        1,
        "the valve's command is kept"
    );
    assert!(core.queued_total() <= size * 10);
    let valve = core.sessions.get("valve").map(|s| s.queue.len());
    assert_eq!(valve, Some(1));
    assert!(
        core.stats().dropped >= 41,
        "the flood's excess and its oldest are dropped, counted"
    );
    // A clean start of both: nothing is left counted.
    join(&mut core, "greedy", V311, true);
    join(&mut core, "valve", V311, true);
    assert_eq!(core.queued_total(), 0);
}

/// An owner written as in the logs: `address 10.0.0.9` or `user alice`.
fn owned(s: &str) -> Owner {
    match s.strip_prefix("address ") {
        Some(ip) => Owner::Address(ip.parse().expect("an address")),
        None => Owner::User(Arc::from(s.trim_start_matches("user "))),
    }
}

fn join_owned(core: &mut Core, id: &str, owner: &str, clean: bool) -> Joined {
    core.join(Join {
        client_id: Arc::from(id),
        level: V5,
        clean,
        expiry: (!clean).then_some(Duration::from_secs(3600)),
        receive_max: 10,
        max_packet: None,
        will: None,
        username: None,
        owner: owned(owner),
        keep_alive: Duration::ZERO,
    })
}

/// At `max_connections`, a newcomer whose owner has fewer connections
/// than the greediest owner gets the place of that owner's newest
/// connection; owners with equal shares keep theirs.
#[test]
fn a_full_house_makes_room_from_the_owner_with_the_most_connections() {
    let mut core = Core::new(Limits::default(), None);
    let junk: Vec<Joined> = (0..5)
        .map(|i| join_owned(&mut core, &format!("junk-{i}"), "address 10.0.0.9", true))
        .collect();
    let sensor = join_owned(&mut core, "sensor-a", "address 10.0.0.2", true);
    assert!(core.evict_connection_for(&owned("address 10.0.0.3")));
    assert_eq!(
        core.must_end(&Arc::from("junk-4"), junk[4].conn_id, Instant::now()),
        Some(Ending::Quota),
        "the greediest owner's newest"
    );
    assert_eq!(
        core.must_end(&Arc::from("junk-3"), junk[3].conn_id, Instant::now()),
        None
    );
    assert_eq!(
        core.must_end(&Arc::from("sensor-a"), sensor.conn_id, Instant::now()),
        None
    );
    let mut even = Core::new(Limits::default(), None);
    join_owned(&mut even, "a", "address 10.0.0.1", true);
    join_owned(&mut even, "b", "address 10.0.0.2", true);
    assert!(
        !even.evict_connection_for(&owned("address 10.0.0.3")),
        "no owner over its share"
    );
    assert!(
        !even.evict_connection_for(&owned("address 10.0.0.1")),
        "nor for an owner at the most"
    );
}

/// Over `max_offline_sessions`, the owner with the most offline sessions
/// loses its oldest: a sensor's session with its queued command stays.
#[test]
fn junk_sessions_push_out_their_own_not_a_sensors() {
    let limits = Limits {
        max_offline_sessions: 3,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    let j = join_owned(&mut core, "sensor", "user sensor", false);
    core.subscribe(&client("sensor"), &[("cmd/sensor".into(), opts(1))], None);
    core.leave(&Arc::from("sensor"), j.conn_id, false, None);
    assert_eq!(core.publish(msg("cmd/sensor", 1, false)), 1);
    for i in 0..10 {
        let id = format!("junk-{i}");
        let j = join_owned(&mut core, &id, "address 10.0.0.9", false);
        core.leave(&Arc::from(id.as_str()), j.conn_id, false, None);
    }
    assert_eq!(core.stats().sessions, 3);
    assert!(
        core.sessions.contains_key("sensor"),
        "the sensor's session stays"
    );
    assert_eq!(core.sessions.get("sensor").map(|s| s.queue.len()), Some(1));
}

/// At `max_subscriptions`, a client whose owner has few subscriptions
/// still subscribes: the owner with the most gives one up.
#[test]
fn a_dashboard_subscribes_when_junk_subscriptions_fill_the_total() {
    let limits = Limits {
        max_subscriptions: 20,
        ..Limits::default()
    };
    let mut core = Core::new(limits, None);
    for i in 0..4 {
        let id = format!("junk-{i}");
        join_owned(&mut core, &id, "address 10.0.0.9", true);
        let filters: Vec<(String, SubOpts)> =
            (0..5).map(|f| (format!("junk/{i}/{f}"), opts(0))).collect();
        core.subscribe(&client(&id), &filters, None);
    }
    assert_eq!(core.stats().subscriptions, 20);
    join_owned(&mut core, "junk-more", "address 10.0.0.9", true);
    assert_eq!(
        core.subscribe(&client("junk-more"), &[("junk/x".into(), opts(0))], None),
        [SUB_QUOTA_EXCEEDED],
        "the greediest owner itself gets no more"
    );
    join_owned(&mut core, "dashboard", "address 10.0.0.2", true);
    assert_eq!(
        core.subscribe(&client("dashboard"), &[("sensors/#".into(), opts(1))], None),
        [1]
    );
    assert_eq!(core.stats().subscriptions, 20);
    assert_eq!(core.stats().subscriptions_evicted, 1);
}
