//! The phases that need only a broker, no upstream: idle clients, wills,
//! a big packet, memory per subscription, the hostile corpus; on outpost,
//! the bridge and any other broker given with `--candidate`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::procs::free_port;
use crate::{corpus, load, procs, Args, Measured};

/// The broker-only phases against another broker.
pub async fn on_candidate(
    args: &Args,
    phase: &str,
    cmd: PathBuf,
) -> anyhow::Result<Vec<Option<f64>>> {
    let port = free_port()?;
    let p = procs::candidate(&cmd, port)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(broker_only(args, phase, port, p.pid())
        .await?
        .into_iter()
        .map(|(_, _, _, v)| v)
        .collect())
}

/// How long the broker is left idle before its RSS is read: outpost gives
/// the heap that connecting left free back to the system every 5 s (glibc
/// `malloc_trim`); mosquitto's is read after the same wait.
const SETTLE: Duration = Duration::from_secs(6);

/// Phases that need only a broker (no upstream): idle clients, memory
/// per subscription, the hostile corpus.
pub async fn broker_only(
    args: &Args,
    phase: &str,
    port: u16,
    pid: u32,
) -> anyhow::Result<Measured> {
    match phase {
        "idle" => {
            let before = procs::rss_kib(pid);
            let (clients, took) = load::idle_clients(port, args.idle).await?;
            tokio::time::sleep(SETTLE).await;
            let after = procs::rss_kib(pid);
            drop(clients);
            Ok(vec![
                (
                    "RSS idle, before any client (code pages included)".into(),
                    "MB",
                    false,
                    Some(before as f64 * 1.024 / 1000.0),
                ),
                (
                    format!("RSS per idle client ({} clients)", args.idle),
                    "KB",
                    false,
                    Some(after.saturating_sub(before) as f64 * 1.024 / args.idle as f64),
                ),
                (
                    format!("time to connect {} clients", args.idle),
                    "s",
                    false,
                    Some(took.as_secs_f64()),
                ),
            ])
        }
        "wills" => {
            let before = procs::rss_kib(pid);
            let (clients, _) = load::idle_clients_after(port, args.idle, 0, 100).await?;
            tokio::time::sleep(SETTLE).await;
            let after = procs::rss_kib(pid);
            drop(clients);
            Ok(vec![(
                format!(
                    "RSS per idle client with a 100-byte will ({} clients)",
                    args.idle
                ),
                "KB",
                false,
                Some(after.saturating_sub(before) as f64 * 1.024 / args.idle as f64),
            )])
        }
        "bigpacket" => {
            let before = procs::rss_kib(pid);
            let (clients, _) = load::idle_clients_after(port, args.idle, 60 * 1024, 0).await?;
            tokio::time::sleep(SETTLE).await;
            let after = procs::rss_kib(pid);
            drop(clients);
            Ok(vec![(
                format!(
                    "RSS per idle client after one 60 KB packet ({} clients)",
                    args.idle
                ),
                "KB",
                false,
                Some(after.saturating_sub(before) as f64 * 1.024 / args.idle as f64),
            )])
        }
        "subs" => {
            let (per_sub, kept) = load::subscriptions(port, pid, 100, 100).await?;
            Ok(vec![
                (
                    "RSS per subscription (100 clients x 100 filters)".into(),
                    "B",
                    false,
                    Some(per_sub),
                ),
                (
                    "RSS kept once 1000 filters got 10 KB and their subscribers left".into(),
                    "KB",
                    false,
                    Some(kept),
                ),
            ])
        }
        "corpus" => {
            let results = corpus::run(port).await;
            let survived = results.iter().filter(|(_, ok)| *ok).count();
            for (case, ok) in &results {
                if !ok {
                    eprintln!("  corpus: failed \"{case}\"");
                }
            }
            Ok(vec![(
                format!("hostile corpus cases survived (of {})", results.len()),
                "",
                true,
                Some(survived as f64),
            )])
        }
        other => bail!("`{other}` is not a broker-only phase"),
    }
}
