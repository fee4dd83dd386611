//! What one group of commands does inside the writer's transaction:
//! inserts within the bounds, deletes, dead letters, the operator's retries
//! and purges, and the counters that survive restarts.

use rusqlite::Transaction;

use super::bounds::{expire, make_room};
use super::db;
use super::dead;
use super::state::State;
use super::writer::{Outputs, SAVE_CLOCK_EVERY_MS};
use super::{Appended, Command, DeadDone, DeadOp, Pick, Qos2Op};
use crate::clock;

pub(super) fn apply(
    tx: &Transaction<'_>,
    group: &[Command],
    state: &mut State,
    admit: bool,
    out: &mut Outputs,
) -> rusqlite::Result<()> {
    let now = clock::now();
    let stopping = group.iter().any(|c| matches!(c, Command::Stop));
    let save = stopping || now.mono.saturating_sub(state.clock_saved) >= SAVE_CLOCK_EVERY_MS;
    if save {
        db::save_clock(tx, now.mono)?;
        state.clock_saved = now.mono;
    }
    for cmd in group {
        match cmd {
            Command::Append { .. } if !admit => {}
            Command::Append {
                records,
                dead,
                mark,
                ..
            } => {
                let mut outcome = Appended::default();
                for (r, reason) in dead {
                    let id = state.take_id();
                    dead::insert_dead(tx, id, r, reason, now.wall)?;
                    db::add_counter(tx, &r.sink, "dead_lettered", 1)?;
                    state.dead_added(tx, r.stored_size())?;
                }
                for r in records {
                    let size = r.stored_size();
                    if !make_room(tx, state, &mut out.drops, size)? {
                        out.drops.refuse(&r.sink);
                        outcome.rejected = outcome.rejected.saturating_add(1);
                        continue;
                    }
                    let table = state.table(tx, &r.sink)?;
                    let id = state.take_id();
                    db::insert(tx, &table, id, r, now.mono)?;
                    state.added(&r.sink, size);
                    outcome.stored = outcome.stored.saturating_add(1);
                    if !out.woken.contains(&r.sink) {
                        out.woken.push(r.sink.clone());
                    }
                }
                if let (Some((client, pkid)), true) = (mark, outcome.stored > 0) {
                    super::marks::qos2_mark(tx, client, *pkid, now.wall)?;
                }
                out.appended.push(outcome);
            }
            Command::Delete { sink, ids } => {
                let Some(table) = state.tables.get(sink).cloned() else {
                    continue;
                };
                let (rows, bytes) = db::delete_many(tx, sink, &table, ids)?;
                state.removed_many(sink, rows, bytes);
            }
            Command::DeadLetter { sink, ids, reason } => {
                let Some(table) = state.tables.get(sink).cloned() else {
                    continue;
                };
                for id in ids {
                    if let Some(size) = dead::dead_letter(tx, sink, &table, *id, reason, now.wall)?
                    {
                        state.removed(sink, size);
                        db::add_counter(tx, sink, "dead_lettered", 1)?;
                        state.dead_added(tx, size)?;
                    }
                }
            }
            Command::Dead {
                op, pick, sinks, ..
            } => out.acted.push(act_on_dead(
                tx,
                state,
                *op,
                *pick,
                sinks,
                now.mono,
                &mut out.woken,
            )?),
            Command::Expire => expire(tx, state, &mut out.drops, now.mono)?,
            Command::SetLimits(l) => {
                tracing::info!(max_bytes = l.max_bytes, max_age_ms = l.max_age_ms, policy = ?l.policy, "outbox bounds changed");
                state.limits = *l;
            }
            Command::Qos2(Qos2Op::Release((client, pkid), _)) => {
                super::marks::qos2_release(tx, client, *pkid)?
            }
            Command::Qos2(Qos2Op::Forget(client)) => super::marks::qos2_forget(tx, client)?,
            Command::Flush(_) | Command::Qos2(Qos2Op::Pending(..)) | Command::Stop => {}
        }
    }
    for (sink, n) in &out.drops.dropped {
        db::add_counter(tx, sink, "dropped", *n)?;
        let e = state.dropped.entry(sink.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    for (sink, n) in &out.drops.refused {
        db::add_counter(tx, sink, "refused", *n)?;
        let e = state.refused.entry(sink.clone()).or_default();
        *e = e.saturating_add(*n);
    }
    // With the clock, after this group's inserts: what `alarm::Last` is
    // written from once this commits.
    if save {
        db::save_next_id(tx, state.next_id)?;
        out.saved = true;
        out.stopping = stopping;
    }
    Ok(())
}

/// An operator's retry or purge. A retried record gets a new id at the end
/// of its queue (its ts is kept), and is counted against `max_bytes` like
/// any new record but never refused for it: it was accepted once.
fn act_on_dead(
    tx: &Transaction<'_>,
    state: &mut State,
    op: DeadOp,
    pick: Pick,
    sinks: &[String],
    now: i64,
    woken: &mut Vec<String>,
) -> rusqlite::Result<DeadDone> {
    let mut done = DeadDone::default();
    for (mut r, size) in dead::dead_rows(tx, pick)? {
        if op == DeadOp::Retry {
            if !sinks.contains(&r.sink) {
                done.kept.push((r.id, r.sink));
                continue;
            }
            let table = state.table(tx, &r.sink)?;
            let dead_id = r.id;
            r.id = state.take_id();
            db::insert(tx, &table, r.id, &r, now)?;
            dead::delete_dead(tx, dead_id)?;
            state.added(&r.sink, r.stored_size());
            if !woken.contains(&r.sink) {
                woken.push(r.sink.clone());
            }
        } else {
            dead::delete_dead(tx, r.id)?;
        }
        state.dead.count = state.dead.count.saturating_sub(1);
        state.dead.bytes = state.dead.bytes.saturating_sub(size);
        done.done = done.done.saturating_add(1);
    }
    Ok(done)
}
