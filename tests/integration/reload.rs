//! SIGHUP: a valid config file is applied by a restart in place (same PID,
//! nothing queued is lost); a broken one is rejected and the running config
//! stays.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_in_place() {
    let w = World::new("");
    let col = w.collect("#").await;
    let mut op = w.start(&w.site().mqtt("", ""));
    let pid = op.pid();

    assert_eq!(
        publish_all(
            w.port,
            "a",
            vec![("sensors/a/telemetry".into(), b"{\"seq\":0}".to_vec())]
        )
        .await,
        1
    );
    assert!(col.wait_for(1, Duration::from_secs(10)).await >= 1);

    let changed = std::fs::read_to_string(&op.config)
        .expect("read config")
        .replace("site1/{device}/telemetry", "site2/{device}/telemetry");
    std::fs::write(&op.config, changed).expect("write config");
    op.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(20), || op
            .log_text()
            .matches("outpost running")
            .count()
            == 2),
        "restarted with the new config:\n{}",
        op.log_text()
    );
    assert!(op.alive());
    assert_eq!(op.pid(), pid, "same process id (systemd keeps tracking it)");

    assert_eq!(
        publish_all(
            w.port,
            "a",
            vec![("sensors/a/telemetry".into(), b"{\"seq\":1}".to_vec())]
        )
        .await,
        1
    );
    assert!(col.wait_for(2, Duration::from_secs(10)).await >= 2);
    let topics: Vec<String> = col.all().into_iter().map(|s| s.topic).collect();
    assert_eq!(topics, ["site1/a/telemetry", "site2/a/telemetry"]);
    assert!(op.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_running_one() {
    let w = World::new("");
    let col = w.collect("#").await;
    let mut op = w.start(&w.site().mqtt("", ""));

    let mut broken = std::fs::read_to_string(&op.config).expect("read config");
    broken.push_str("\n[store.surprise]\n");
    std::fs::write(&op.config, broken).expect("write config");
    op.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || op
            .log_text()
            .contains("config rejected, keeping the running one")),
        "{}",
        op.log_text()
    );
    assert!(
        op.log_text().contains("store.surprise"),
        "the problem is named by its key path"
    );
    assert!(op.alive());
    assert_eq!(
        op.log_text().matches("outpost running").count(),
        1,
        "no restart"
    );

    assert_eq!(
        publish_all(
            w.port,
            "a",
            vec![("sensors/a/telemetry".into(), b"{\"seq\":0}".to_vec())]
        )
        .await,
        1
    );
    assert!(col.wait_for(1, Duration::from_secs(10)).await >= 1);
    assert_eq!(col.all()[0].topic, "site1/a/telemetry");
    assert!(op.terminate().success());
}
