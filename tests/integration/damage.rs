//! A damaged outbox, as an SD card or a hurried technician leaves one:
//! cut short, a page overwritten, the WAL deleted after a crash, the file
//! emptied. outpost starts all the same, its broker answers a canary within
//! seconds, what can be read is salvaged and sent, the damaged file is set
//! aside, and an alarm says what was lost.

use std::time::{Duration, Instant};

use outpost::source::broker::codec::{Props, V5};

use crate::common::*;

const QUEUED: usize = 10_000;

enum Damage {
    Truncate,
    OverwritePage,
    DeleteWalAfterKill,
    Zero,
}

struct Outcome {
    salvaged: usize,
    canary_ms: u128,
    alarms: Vec<String>,
    aside: bool,
    in_order: bool,
}

fn readings() -> Vec<(String, Vec<u8>)> {
    (0..QUEUED)
        .map(|n| {
            (
                "sensors/dev-0/telemetry".to_string(),
                format!("{{\"seq\":{n}}}").into_bytes(),
            )
        })
        .collect()
}

async fn damaged(damage: Damage) -> Outcome {
    let mut w = World::new("");
    let col = w.collect("site1/#").await;
    w.up.stop();
    let mut op = w.start(&w.site().mqtt("", ""));
    assert_eq!(publish_all(w.port, "fill", readings()).await, QUEUED);
    let outbox = op.outbox();
    match damage {
        Damage::DeleteWalAfterKill => {
            op.kill9();
            let wal = outbox.with_extension("db-wal");
            assert!(wal.exists(), "no WAL after the kill");
            std::fs::remove_file(wal).expect("delete the WAL");
        }
        _ => {
            op.terminate();
            let len = std::fs::metadata(&outbox).expect("outbox").len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&outbox)
                .expect("open");
            match damage {
                Damage::Truncate => f.set_len(len / 2).expect("truncate"),
                Damage::Zero => f.set_len(0).expect("zero"),
                Damage::OverwritePage => {
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(&[0xA5; 4096], len / 2).expect("overwrite");
                }
                Damage::DeleteWalAfterKill => unreachable!(),
            }
        }
    }

    let started = Instant::now();
    op.restart();
    let code = {
        let (mut c, _) = Raw::connected(w.port, &Hello::new(V5, "canary")).await;
        c.publish(
            "sensors/canary/telemetry",
            b"{\"seq\":0}",
            1,
            false,
            Props::default(),
        )
        .await
        .expect("a PUBACK")
    };
    let canary_ms = started.elapsed().as_millis();
    assert_eq!(code, 0, "the canary was refused: {}", op.log_text());

    w.up.restart();
    let seen_canary = tokio::time::timeout(Duration::from_secs(30), async {
        while !arrivals(&col.all()).contains_key("canary") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    assert!(seen_canary, "the canary did not arrive: {}", op.log_text());
    col.settle(Duration::from_secs(2), Duration::from_secs(30))
        .await;
    let seen = arrivals(&col.all()).remove("dev-0").unwrap_or_default();
    let firsts = first_arrivals(&seen);
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let status = op.status_json();
    let alarms = status["outbox"]["alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| a["summary"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let aside = std::fs::read_dir(w.path())
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.db.damaged-")
        });
    let text = op.status_text();
    assert!(
        text.contains("OUTBOX ALARM"),
        "status does not show the alarm:\n{text}"
    );
    assert!(
        op.log_text().contains("ERROR"),
        "no ERROR in the journal:\n{}",
        op.log_text()
    );
    Outcome {
        salvaged: distinct.len(),
        canary_ms,
        alarms,
        aside,
        in_order: firsts.windows(2).all(|w| w[0] < w[1]),
    }
}

fn report(what: &str, o: &Outcome) {
    eprintln!(
        "{what}: {} of {QUEUED} arrived ({} lost), canary acknowledged {} ms after the start; alarm: {:?}",
        o.salvaged,
        QUEUED - o.salvaged,
        o.canary_ms,
        o.alarms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_cut_in_half_is_set_aside_and_its_first_half_salvaged() {
    let o = damaged(Damage::Truncate).await;
    report("cut in half", &o);
    assert!(o.aside, "the damaged file was not set aside");
    assert!(
        o.alarms.iter().any(|a| a.contains("damaged")),
        "{:?}",
        o.alarms
    );
    assert!(o.salvaged >= QUEUED * 2 / 5, "only {} salvaged", o.salvaged);
    assert!(o.in_order);
    assert!(o.canary_ms < 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_with_a_page_overwritten_loses_only_that_page() {
    let o = damaged(Damage::OverwritePage).await;
    report("4 KiB overwritten", &o);
    assert!(o.aside, "the damaged file was not set aside");
    assert!(
        o.alarms.iter().any(|a| a.contains("damaged")),
        "{:?}",
        o.alarms
    );
    assert!(
        o.salvaged >= QUEUED * 95 / 100,
        "only {} salvaged",
        o.salvaged
    );
    assert!(o.in_order);
    assert!(o.canary_ms < 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_deleted_after_a_kill_is_noticed_and_reported() {
    let o = damaged(Damage::DeleteWalAfterKill).await;
    report("WAL deleted after SIGKILL", &o);
    assert!(o.alarms.iter().any(|a| a.contains("WAL")), "{:?}", o.alarms);
    assert!(o.in_order);
    assert!(o.canary_ms < 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_outbox_is_noticed_and_reported() {
    let o = damaged(Damage::Zero).await;
    report("emptied", &o);
    assert!(
        o.alarms
            .iter()
            .any(|a| a.contains("holds less than it did")),
        "{:?}",
        o.alarms
    );
    assert!(o.canary_ms < 10_000);
}
