use std::time::Duration;

use super::*;
use crate::config::Synchronous;
use crate::record::RecordKind;
use crate::units::{ByteSize, Seconds};

fn cfg(max_bytes: u64, policy: FullPolicy) -> StoreConfig {
    StoreConfig {
        path: "outbox.db".into(),
        max_bytes: ByteSize(max_bytes),
        max_age: Seconds(Duration::from_secs(3600)),
        full_policy: policy,
        synchronous: Synchronous::Normal,
        ..StoreConfig::default()
    }
}

fn rec(sink: &str, device: &str, n: i64) -> Record {
    Record {
        id: 0,
        sink: sink.into(),
        device: device.into(),
        kind: RecordKind::Telemetry,
        ts: n,
        topic: format!("s/{device}/t"),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        ts_source: Default::default(),
    }
}

/// An outbox at `path` holding up to `max_bytes` (the oldest dropped
/// beyond), with a queue for each of `sinks`.
fn open(path: &std::path::Path, max_bytes: u64, sinks: &[&str]) -> (Outbox, WriterHandle) {
    let sinks: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
    Outbox::open(
        path.to_path_buf(),
        &cfg(max_bytes, FullPolicy::DropOldest),
        &sinks,
    )
    .expect("open the outbox")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn append_fetch_delete_in_fifo_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ob, w) = open(&dir.path().join("o.db"), 1 << 20, &["a", "b"]);
    rt().block_on(async {
        let recs = (0..10)
            .map(|i| rec(if i % 2 == 0 { "a" } else { "b" }, "d", i))
            .collect();
        let done = ob.append(recs).await.expect("append");
        assert_eq!(
            done,
            Appended {
                stored: 10,
                rejected: 0
            }
        );
        let a = ob.fetch("a", 0, 100).await.expect("fetch");
        assert_eq!(a.iter().map(|r| r.ts).collect::<Vec<_>>(), [0, 2, 4, 6, 8]);
        let next = ob.fetch("a", a[1].id, 2).await.expect("fetch");
        assert_eq!(next.iter().map(|r| r.ts).collect::<Vec<_>>(), [4, 6]);
        ob.delete("a", vec![a[0].id, a[1].id])
            .await
            .expect("delete");
        ob.flush().await.expect("flush");
        let a2 = ob.fetch("a", 0, 100).await.expect("fetch");
        assert_eq!(a2.len(), 3);
        assert_eq!(ob.stats()["a"].depth.records, 3);
        assert_eq!(ob.stats()["b"].depth.records, 5);
    });
    drop(ob);
    w.join();
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    // Two-digit readings are the largest here: ten of them fill the outbox.
    let one = rec("a", "d", 99).stored_size();
    let c = cfg(one * 10, FullPolicy::DropOldest);
    {
        let (ob, w) = Outbox::open(path.clone(), &c, &["a".into()]).expect("open");
        rt().block_on(async {
            for i in 0..25 {
                ob.append(vec![rec("a", "d", i)]).await.expect("append");
            }
            let all = ob.fetch("a", 0, 100).await.expect("fetch");
            assert_eq!(
                all.iter().map(|r| r.ts).collect::<Vec<_>>(),
                (15..25).collect::<Vec<_>>()
            );
            assert_eq!(ob.stats()["a"].dropped, 15);
        });
        drop(ob);
        w.join();
    }
    let (ob, w) = Outbox::open(path, &c, &["a".into()]).expect("reopen");
    assert_eq!(ob.stats()["a"].dropped, 15);
    assert_eq!(ob.stats()["a"].depth.records, 10);
    drop(ob);
    w.join();
}

#[test]
fn reject_new_keeps_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = rec("a", "d", 0).stored_size();
    let (ob, w) = Outbox::open(
        dir.path().join("o.db"),
        &cfg(one * 10, FullPolicy::RejectNew),
        &["a".into()],
    )
    .expect("open");
    rt().block_on(async {
        let recs = (0..25).map(|i| rec("a", "d", i)).collect();
        let done = ob.append(recs).await.expect("append");
        assert_eq!(
            done,
            Appended {
                stored: 10,
                rejected: 15
            }
        );
        let all = ob.fetch("a", 0, 100).await.expect("fetch");
        assert_eq!(
            all.iter().map(|r| r.ts).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // Refused, never accepted: not counted as dropped.
        assert_eq!(ob.stats()["a"].refused, 15);
        assert_eq!(ob.stats()["a"].dropped, 0);
    });
    drop(ob);
    w.join();
}

#[test]
fn expired_records_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(1 << 20, FullPolicy::DropOldest);
    c.max_age = Seconds(Duration::from_millis(1));
    let (ob, w) = Outbox::open(dir.path().join("o.db"), &c, &["a".into()]).expect("open");
    rt().block_on(async {
        ob.append((0..5).map(|i| rec("a", "d", i)).collect())
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(20)).await;
        ob.expire().await.expect("expire");
        ob.flush().await.expect("flush");
        assert!(ob.fetch("a", 0, 10).await.expect("fetch").is_empty());
        assert_eq!(ob.stats()["a"].dropped, 5);
    });
    drop(ob);
    w.join();
}

#[test]
fn an_unwritable_directory_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").expect("write");
    // A path under a regular file can never be created.
    let path = blocker.join("sub").join("o.db");
    let err = Outbox::open(path, &cfg(1 << 20, FullPolicy::DropOldest), &[])
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err}");
    assert!(err.to_string().contains("file"), "{err}");
}

#[test]
fn ids_are_never_reused_even_after_the_queue_empties_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let c = cfg(1 << 20, FullPolicy::DropOldest);
    let first = {
        let (ob, w) = Outbox::open(path.clone(), &c, &["a".into()]).expect("open");
        let ids = rt().block_on(async {
            ob.append((0..3).map(|i| rec("a", "d", i)).collect())
                .await
                .expect("append");
            let got = ob.fetch("a", 0, 10).await.expect("fetch");
            let ids: Vec<i64> = got.iter().map(|r| r.id).collect();
            // The newest goes to the dead letters, the others are delivered.
            ob.dead_letter("a", vec![ids[2]], "test".into())
                .await
                .expect("dead");
            ob.delete("a", ids[..2].to_vec()).await.expect("delete");
            ob.flush().await.expect("flush");
            assert!(ob.fetch("a", 0, 10).await.expect("fetch").is_empty());
            ids
        });
        drop(ob);
        w.join();
        ids
    };
    let (ob, w) = Outbox::open(path, &c, &["a".into()]).expect("reopen");
    rt().block_on(async {
        ob.append(vec![rec("a", "d", 9)]).await.expect("append");
        let got = ob.fetch("a", 0, 10).await.expect("fetch");
        assert!(got[0].id > first[2], "{} after {first:?}", got[0].id);
    });
    drop(ob);
    w.join();
}

#[test]
fn a_first_schema_outbox_is_moved_with_every_record_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    {
        // The schema outpost 0.1 wrote.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE records (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
                 device TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL, topic TEXT NOT NULL,
                 payload BLOB NOT NULL, size INTEGER NOT NULL, ingested_at INTEGER NOT NULL);
             CREATE INDEX records_by_sink ON records (sink, id);
             CREATE TABLE counters (sink TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
                 PRIMARY KEY (sink, name));
             INSERT INTO counters VALUES ('a', 'dropped', 4);
             PRAGMA user_version = 1;",
        )
        .expect("schema 1");
        for (i, (sink, kind)) in [("a", "telemetry"), ("b", "attributes"), ("a", "rpc")]
            .iter()
            .enumerate()
        {
            conn.execute(
                "INSERT INTO records (sink, device, kind, ts, topic, payload, size, ingested_at)
                 VALUES (?1, 'dev', ?2, ?3, 's/dev/t', ?4, 60, 0)",
                rusqlite::params![
                    sink,
                    kind,
                    100 + i as i64,
                    format!("{{\"n\":{i}}}").into_bytes()
                ],
            )
            .expect("insert");
        }
    }
    let (ob, w) = open(&path, 1 << 20, &["a", "b"]);
    rt().block_on(async {
        let a = ob.fetch("a", 0, 10).await.expect("fetch");
        assert_eq!(
            a.iter().map(|r| (r.id, r.ts)).collect::<Vec<_>>(),
            [(1, 100), (3, 102)]
        );
        assert_eq!(a[1].kind, RecordKind::Rpc);
        assert_eq!(a[0].payload, b"{\"n\":0}");
        let b = ob.fetch("b", 0, 10).await.expect("fetch");
        assert_eq!((b[0].id, b[0].kind), (2, RecordKind::Attributes));
        assert_eq!(ob.stats()["a"].dropped, 4, "counters kept");
        ob.append(vec![rec("a", "d", 7)]).await.expect("append");
        assert_eq!(ob.fetch("a", 3, 10).await.expect("fetch")[0].id, 4);
    });
    drop(ob);
    w.join();
    let conn = rusqlite::Connection::open(&path).expect("open");
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(v, 3);
    let old: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'records'",
            [],
            |r| r.get(0),
        )
        .expect("master");
    assert_eq!(old, 0, "the old table is gone");
}

#[test]
fn dead_letters_are_retried_into_their_queue_or_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (ob, w) = open(&path, 1 << 20, &["a"]);
    rt().block_on(async {
        ob.append(vec![rec("a", "d", 1), rec("a", "d", 2), rec("a", "d", 3)])
            .await
            .expect("append");
        let ids: Vec<i64> = ob
            .fetch("a", 0, 10)
            .await
            .expect("fetch")
            .iter()
            .map(|r| r.id)
            .collect();
        ob.dead_letter("a", ids.clone(), "too big".into())
            .await
            .expect("dead");
        // A dead letter of a sink that is not configured any more stays.
        let gone = Record {
            sink: "old".into(),
            ..rec("old", "d", 9)
        };
        ob.append_with_dead(Vec::new(), vec![(gone, "no such sink".into())], None, None)
            .await
            .expect("dead of old");
        ob.flush().await.expect("flush");
        assert_eq!(ob.dead_stats().count, 4);
        assert!(ob.oldest_ingested().is_empty(), "queue a is empty");

        let one = ob
            .dead_letters_act(DeadOp::Retry, Pick::One(ids[1]))
            .await
            .expect("retry one");
        assert_eq!(one.done, 1);
        let queued = ob.fetch("a", 0, 10).await.expect("fetch");
        assert_eq!(queued.iter().map(|r| r.ts).collect::<Vec<_>>(), [2]);
        assert!(
            queued[0].id > ids[2],
            "a retried record goes to the end with a new id"
        );
        assert!(ob.oldest_ingested().contains_key("a"));
        assert_eq!(ob.dead_stats().count, 3);
        assert_eq!(ob.stats()["a"].depth.records, 1);

        let all = ob
            .dead_letters_act(DeadOp::Retry, Pick::All)
            .await
            .expect("retry all");
        assert_eq!(all.done, 2);
        assert_eq!(all.kept.len(), 1, "the old sink's letter is kept: {all:?}");
        assert_eq!(all.kept[0].1, "old");
        let queued = ob.fetch("a", 0, 10).await.expect("fetch");
        assert_eq!(queued.iter().map(|r| r.ts).collect::<Vec<_>>(), [2, 1, 3]);

        let none = ob
            .dead_letters_act(DeadOp::Purge, Pick::One(123_456))
            .await
            .expect("purge none");
        assert_eq!(none.done, 0);
        let purged = ob
            .dead_letters_act(DeadOp::Purge, Pick::All)
            .await
            .expect("purge");
        assert_eq!(purged.done, 1);
        assert_eq!(ob.dead_stats().count, 0);
        assert_eq!(ob.dead_stats().bytes, 0);
        ob.close().await;
    });
    w.join();
    assert!(dead_letters(&path).expect("list").is_empty());
}

/// Deletes of ranges, gaps, repeats, ids already gone and ids of another
/// queue remove exactly the rows named and keep the counts right: the
/// depths the writer keeps equal those a reopen counts from the rows.
#[test]
fn deletes_in_runs_remove_exactly_the_ids_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let sinks = ["a", "b"];
    let (ob, w) = open(&path, 1 << 20, &sinks);
    let kept = rt().block_on(async {
        let recs = (0..40)
            .map(|i| rec(if i % 4 == 3 { "b" } else { "a" }, "d", i))
            .collect();
        ob.append(recs).await.expect("append");
        let a = ob.fetch("a", 0, 100).await.expect("fetch");
        let b = ob.fetch("b", 0, 100).await.expect("fetch");
        let ids: Vec<i64> = a.iter().map(|r| r.id).collect();
        // Two runs, one lone id, a repeat, and an id of queue b.
        let mut gone: Vec<i64> = ids.get(0..5).expect("5").to_vec();
        gone.extend_from_slice(ids.get(9..14).expect("14"));
        gone.push(ids[20]);
        gone.push(ids[2]);
        gone.push(b[0].id);
        gone.reverse();
        ob.delete("a", gone.clone()).await.expect("delete");
        // Again, with ids already deleted beside a new one.
        ob.delete("a", vec![ids[0], ids[1], ids[29]])
            .await
            .expect("delete");
        ob.flush().await.expect("flush");
        let left = ob.fetch("a", 0, 100).await.expect("fetch");
        let want: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !gone.contains(id) && *id != ids[29])
            .collect();
        assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), want);
        assert_eq!(ob.fetch("b", 0, 100).await.expect("fetch").len(), b.len());
        let stats = ob.stats();
        assert_eq!(stats["a"].depth.records, want.len() as u64);
        (stats["a"].depth, stats["b"].depth)
    });
    drop(ob);
    w.join();
    let (ob, w) = open(&path, 1 << 20, &sinks);
    let stats = ob.stats();
    assert_eq!((stats["a"].depth, stats["b"].depth), kept);
    drop(ob);
    w.join();
}

#[test]
fn a_delete_waits_to_ride_with_the_next_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ob, w) = open(&dir.path().join("o.db"), 1 << 20, &["a"]);
    rt().block_on(async {
        ob.append(vec![rec("a", "d", 1)]).await.expect("append");
        let first = ob.fetch("a", 0, 10).await.expect("fetch");
        ob.delete("a", vec![first[0].id]).await.expect("delete");
        // Well inside the window: the delete is not committed alone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ob.stats()["a"].depth.records, 1, "a lone delete waits");
        assert_eq!(ob.fetch("a", 0, 10).await.expect("fetch").len(), 1);
        // The next reading's commit takes it along.
        ob.append(vec![rec("a", "d", 2)]).await.expect("append");
        let left = ob.fetch("a", 0, 10).await.expect("fetch");
        assert_eq!(left.iter().map(|r| r.ts).collect::<Vec<_>>(), [2]);
        assert_eq!(ob.stats()["a"].depth.records, 1);
    });
    drop(ob);
    w.join();
}

#[test]
fn many_deletes_commit_without_waiting_for_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ob, w) = open(&dir.path().join("o.db"), 64 << 20, &["a"]);
    rt().block_on(async {
        let n = super::writer::DELETE_ROWS as i64;
        ob.append((0..n).map(|i| rec("a", "d", i)).collect())
            .await
            .expect("append");
        let mut ids = Vec::new();
        while let Some(last) = ids.last().copied().or(Some(0)) {
            let got = ob.fetch("a", last, 4096).await.expect("fetch");
            if got.is_empty() {
                break;
            }
            ids.extend(got.iter().map(|r| r.id));
        }
        assert_eq!(ids.len() as i64, n);
        // A drain: acknowledgements only, in the session's chunks.
        for chunk in ids.chunks(1024) {
            ob.delete("a", chunk.to_vec()).await.expect("delete");
        }
        let start = std::time::Instant::now();
        while ob.stats()["a"].depth.records > 0 && start.elapsed() < Duration::from_millis(600) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            ob.stats()["a"].depth.records,
            0,
            "enough deletes commit before the window ends"
        );
    });
    drop(ob);
    w.join();
}

#[test]
fn an_outbox_with_larger_pages_is_rebuilt_with_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let sinks = ["a"];
    let page_size = |path: &std::path::Path| -> i64 {
        let c = rusqlite::Connection::open(path).expect("open");
        c.query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page_size")
    };
    let (ob, w) = open(&path, 1 << 20, &sinks);
    rt().block_on(async {
        ob.append((0..50).map(|i| rec("a", "d", i)).collect())
            .await
            .expect("append");
    });
    drop(ob);
    w.join();
    assert_eq!(page_size(&path), super::db::PAGE_SIZE, "a new file");
    // As an earlier outpost made it.
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode = DELETE; PRAGMA page_size = 4096; VACUUM; PRAGMA journal_mode = WAL;",
        )
        .expect("4 KiB pages");
    }
    assert_eq!(page_size(&path), 4096);
    let (ob, w) = open(&path, 1 << 20, &sinks);
    rt().block_on(async {
        let all = ob.fetch("a", 0, 100).await.expect("fetch");
        assert_eq!(
            all.iter().map(|r| r.ts).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        assert_eq!(ob.stats()["a"].depth.records, 50);
        ob.append(vec![rec("a", "d", 50)]).await.expect("append");
    });
    drop(ob);
    w.join();
    assert_eq!(page_size(&path), super::db::PAGE_SIZE, "rebuilt");
    let c = rusqlite::Connection::open(&path).expect("open");
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

/// Readings arriving one at a time, 5,000 a second, share commits (see
/// `pace`): one commit each would rewrite the same pages thousands of
/// times a second.
#[test]
fn readings_many_per_millisecond_share_commits() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ob, w) = open(&dir.path().join("o.db"), 64 << 20, &["a"]);
    let n: u32 = 1_000;
    let every = Duration::from_micros(200);
    let sender = {
        let ob = ob.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            for i in 0..n {
                // On a schedule: a late sender catches up, the rate holds.
                if let Some(wait) = (every * i).checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                ob.submit_blocking(vec![rec("a", "d", i64::from(i))])
                    .expect("submit");
            }
        })
    };
    sender.join().expect("sender");
    rt().block_on(async { ob.flush().await.expect("flush") });
    assert_eq!(ob.stats()["a"].depth.records, u64::from(n));
    let commits = ob.shared.commits.load(Ordering::Relaxed);
    assert!(
        u64::from(n) >= 4 * commits,
        "{n} readings took {commits} commits"
    );
    drop(ob);
    w.join();
}

/// Ages are outpost's clock: the row's `ingested_at` is that clock, not
/// the wall clock, so a wall-clock step cannot make it old.
#[test]
fn rows_age_on_outposts_clock_not_the_wall_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (ob, w) = open(&path, 1 << 20, &["a"]);
    let before = crate::clock::mono_ms();
    rt().block_on(async {
        ob.append(vec![rec("a", "d", 1)]).await.expect("append");
        let at = ob.oldest_ingested()["a"];
        assert!(
            at >= before && at <= crate::clock::mono_ms(),
            "ingested_at {at} is not outpost's clock ({before}..)"
        );
        ob.expire().await.expect("expire");
        ob.flush().await.expect("flush");
        assert_eq!(ob.fetch("a", 0, 10).await.expect("fetch").len(), 1);
    });
    drop(ob);
    w.join();
    // outpost's clock was saved in the file when the writer stopped.
    let conn = rusqlite::Connection::open(&path).expect("open");
    let saved: i64 = conn
        .query_row(
            "SELECT value FROM counters WHERE sink = '' AND name = 'clock_ms'",
            [],
            |r| r.get(0),
        )
        .expect("the clock is saved");
    assert!(saved >= before, "{saved} < {before}");
}

/// A schema-2 file kept `ingested_at` on the wall clock: each row keeps the
/// age it had, now counted on outpost's clock.
#[test]
fn a_schema_2_outbox_keeps_its_rows_ages_on_outposts_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (ob, w) = open(&path, 1 << 20, &["a"]);
    rt().block_on(async {
        ob.append((0..3).map(|i| rec("a", "d", i)).collect())
            .await
            .expect("append");
    });
    drop(ob);
    w.join();
    let half_hour = 1_800_000;
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(&format!(
            "ALTER TABLE q1 DROP COLUMN ts_offset;
             UPDATE q1 SET ingested_at = {};
             DELETE FROM counters WHERE name = 'clock_ms';
             PRAGMA user_version = 2;",
            crate::clock::wall_ms() - half_hour
        ))
        .expect("make it a schema-2 file");
    }
    let mut c = cfg(1 << 20, FullPolicy::DropOldest);
    c.max_age = Seconds(Duration::from_secs(3600));
    let (ob, w) = Outbox::open(path.clone(), &c, &["a".into()]).expect("reopen");
    rt().block_on(async {
        let age = crate::clock::mono_ms() - ob.oldest_ingested()["a"];
        assert!(
            (half_hour - 5_000..half_hour + 5_000).contains(&age),
            "age {age} ms"
        );
        ob.expire().await.expect("expire");
        ob.flush().await.expect("flush");
        assert_eq!(ob.fetch("a", 0, 10).await.expect("fetch").len(), 3);
        // Under a 10-minute bound they are too old, on outpost's clock.
        c.max_age = Seconds(Duration::from_secs(600));
        ob.set_limits(&c).await.expect("limits");
        ob.flush().await.expect("flush");
        assert!(ob.fetch("a", 0, 10).await.expect("fetch").is_empty());
        assert_eq!(ob.stats()["a"].dropped, 3);
    });
    drop(ob);
    w.join();
}

/// A provisional stamp leaves corrected once the clock is trusted; one
/// stored in an earlier run is marked an estimate.
#[test]
fn provisional_stamps_are_corrected_when_read_once_the_clock_is_trusted() {
    use crate::clock::Now;
    use crate::record::TsSource;
    let stamped = 1_735_689_600_000; // 2025-01-01, mono 10 s
    let offset = stamped - 10_000;
    let untrusted = Now {
        wall: stamped + 50_000,
        mono: 60_000,
        trusted: false,
    };
    assert_eq!(
        read::stamp(stamped, Some(offset), 10_000, &untrusted, 0),
        (stamped, TsSource::Provisional { offset })
    );
    let trusted = Now {
        wall: 1_796_644_800_000,
        mono: 70_000,
        trusted: true,
    };
    let right = trusted.wall - 60_000;
    assert_eq!(
        read::stamp(stamped, Some(offset), 10_000, &trusted, 0),
        (right, TsSource::Corrected)
    );
    assert_eq!(
        read::stamp(stamped, Some(offset), 10_000, &trusted, 20_000),
        (right, TsSource::Estimated)
    );
    assert_eq!(
        read::stamp(42, None, 10_000, &trusted, 0),
        (42, TsSource::Trusted)
    );
}
