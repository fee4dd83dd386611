//! outpost-bench: the real binary measured end to end, beside a Mosquitto
//! bridge (`persistence true`, `autosave_interval 1`, `topic bench/# out 1`)
//! measured in the same run, with a private upstream mosquitto for both.
//!
//! One command prints every row with its ratio to the baseline:
//! - the disk's own fsync latency (p50/p99), in the state directory;
//! - CPU per reading at a sensor's pace (`cpu`: 20, 200 and 1,000/s);
//! - bytes written to storage per reading at a paced low rate (the broker
//!   process's `/proc/PID/io` `write_bytes`);
//! - PUBACK and end-to-end latency p99 at a paced rate, once with the
//!   readings spread evenly in time and once in bursts (every publisher
//!   on the same tick);
//! - delivered readings/s, CPU-seconds per reading and bytes per reading
//!   flat out;
//! - the drain rate of a backlog queued during an outage;
//! - RSS idle before any client, RSS per idle connected client and the
//!   time to connect them all, per idle client with a 100-byte will
//!   (`wills`), and per idle client after each sent one 60 KB packet
//!   (`bigpacket`).
//!
//! Paced phases run before the flat-out ones, so the write-back of an
//! earlier phase does not pollute their latency tails. Every phase starts
//! fresh processes. Build with `cargo build --release --bins`.

mod brokers;
mod corpus;
mod load;
mod procs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use brokers::{broker_only, on_candidate};
use load::{Collector, Pace};
use procs::{free_port, Proc, ScratchDir};

#[derive(Parser, Debug)]
#[command(about = "Measure outpost end to end beside a Mosquitto bridge, in the same run")]
struct Args {
    /// Phases to run, in this order: low, paced, flat, drain, idle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "low,paced,flat,drain,idle"
    )]
    phases: Vec<String>,
    /// What to measure: `outpost`, `batch` (outpost with the MQTT sink's
    /// `format = "batch"`), `bridge` (the baseline), `old` (the binary
    /// given with --old).
    #[arg(long, value_delimiter = ',', default_value = "outpost,batch,bridge")]
    targets: Vec<String>,
    /// Another outpost binary to measure beside this one (e.g. a release
    /// from before a change).
    #[arg(long)]
    old: Option<PathBuf>,
    /// Other brokers for the idle-client phase: NAME=PATH, a binary that
    /// takes its port as its first argument.
    #[arg(long)]
    candidate: Vec<String>,
    /// CPU phase (`cpu`): the paced rates, readings per second, each run
    /// for `--cpu-secs`.
    #[arg(long, value_delimiter = ',', default_value = "20,200,1000")]
    cpu_rates: Vec<u64>,
    #[arg(long, default_value_t = 10)]
    cpu_secs: u64,
    /// Low-rate phase: readings per second and seconds.
    #[arg(long, default_value_t = 20)]
    low_rate: u64,
    #[arg(long, default_value_t = 15)]
    low_secs: u64,
    /// The low-rate phase's second rate, on the same broker: readings per
    /// second and seconds.
    #[arg(long, default_value_t = 5000)]
    high_rate: u64,
    #[arg(long, default_value_t = 8)]
    high_secs: u64,
    /// Paced phase: readings per second and seconds.
    #[arg(long, default_value_t = 200)]
    paced_rate: u64,
    #[arg(long, default_value_t = 15)]
    paced_secs: u64,
    /// Flat-out phase: publishers and readings each.
    #[arg(long, default_value_t = 50)]
    publishers: usize,
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Readings queued during the outage of the drain phase.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Clients of the idle phase.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Payload padding in bytes (the reading is about 60 bytes more).
    #[arg(long, default_value_t = 50)]
    pad: usize,
    /// outpost's `store.synchronous`: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Extra keys for outpost's `[sink.up]` (e.g. `format = "batch"`), for
    /// the `outpost` and `old` targets (and added to `batch`'s).
    #[arg(long, default_value = "")]
    sink: String,
    /// Print the paced phases' latency quantiles (p50 … max), not only p99.
    #[arg(long)]
    quantiles: bool,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A broker under measurement, fresh for every phase.
struct Running {
    dir: ScratchDir,
    upstream: Option<Proc>,
    up_port: u16,
    broker: Proc,
    port: u16,
    /// Where its readings arrive upstream.
    filter: &'static str,
}

impl Running {
    fn start(args: &Args, target: &str, outpost: &Path, persist: bool) -> anyhow::Result<Running> {
        let dir = ScratchDir::new(target)?;
        let up_port = free_port()?;
        let upstream = procs::upstream(dir.path(), up_port, persist)?;
        let port = free_port()?;
        let (broker, filter) = match target {
            "bridge" => (procs::bridge(dir.path(), port, up_port)?, "bench/#"),
            "outpost" | "old" | "batch" => {
                let bin = if target == "old" {
                    args.old
                        .clone()
                        .context("--old PATH names the other binary")?
                } else {
                    outpost.to_path_buf()
                };
                let sink = match target {
                    "batch" => format!("format = \"batch\"\n{}", args.sink),
                    _ => args.sink.clone(),
                };
                (
                    procs::outpost(&bin, dir.path(), port, up_port, &args.synchronous, &sink)?,
                    "up/#",
                )
            }
            other => bail!("unknown target `{other}` (outpost, batch, bridge, old)"),
        };
        Ok(Running {
            dir,
            upstream: Some(upstream),
            up_port,
            broker,
            port,
            filter,
        })
    }

    fn pid(&self) -> u32 {
        self.broker.pid()
    }
}

#[derive(Debug, Default, Clone)]
struct Row {
    figure: String,
    values: Vec<(String, Option<f64>)>,
    unit: &'static str,
    /// Higher is better (for the ratio's direction note).
    higher_better: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let outpost = std::env::current_exe()?.with_file_name("outpost");
    if !outpost.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release --bins`",
            outpost.display()
        );
    }
    if std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_err()
    {
        bail!("mosquitto is not installed: apt-get install -y mosquitto");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let probe = ScratchDir::new("fsync")?;
    let (f50, f99) = procs::fsync_latency(probe.path(), 300)?;
    println!(
        "outpost-bench: readings of ~{} B at QoS 1, outpost synchronous = {}, disk fsync p50 {f50:.2} ms / p99 {f99:.2} ms (4 KiB + fdatasync, {})",
        args.pad + 60,
        args.synchronous,
        probe.path().parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    for phase in &args.phases {
        let mut phase_rows: Vec<Row> = Vec::new();
        for target in &args.targets {
            let got = rt
                .block_on(run_phase(&args, phase, target, &outpost))
                .with_context(|| format!("phase {phase}, {target}"))?;
            for (i, (figure, unit, higher_better, value)) in got.into_iter().enumerate() {
                if phase_rows.len() <= i {
                    phase_rows.push(Row {
                        figure,
                        unit,
                        higher_better,
                        ..Row::default()
                    });
                }
                phase_rows[i].values.push((target.clone(), value));
            }
        }
        if ["idle", "wills", "bigpacket", "subs", "corpus"].contains(&phase.as_str()) {
            for c in &args.candidate {
                let (name, path) = c.split_once('=').context("--candidate takes NAME=PATH")?;
                let got = rt.block_on(on_candidate(&args, phase, PathBuf::from(path)))?;
                for (i, v) in got.into_iter().enumerate() {
                    if let Some(r) = phase_rows.get_mut(i) {
                        r.values.push((name.to_string(), v));
                    }
                }
            }
        }
        for r in &phase_rows {
            print_row(r);
        }
    }
    Ok(())
}

fn print_row(r: &Row) {
    let base = r
        .values
        .iter()
        .find(|(t, _)| t == "bridge")
        .and_then(|(_, v)| *v);
    let cells: Vec<String> = r
        .values
        .iter()
        .map(|(t, v)| match v {
            Some(x) => format!("{t} {}", fmt(*x)),
            None => format!("{t} n/a"),
        })
        .collect();
    // The disk's own figure, and differences from it, have no ratio.
    let relative = !r.figure.contains("fsync");
    let ratio: String = r
        .values
        .iter()
        .filter(|(t, _)| relative && t != "bridge")
        .filter_map(|(t, v)| {
            let (o, b) = v.zip(base).filter(|(_, b)| *b > 0.0)?;
            Some(format!("  {t}/bridge {:.2}x", o / b))
        })
        .collect();
    let better = if r.higher_better {
        "higher is better"
    } else {
        "lower is better"
    };
    println!(
        "{:<48} {} {}{ratio}  ({better})",
        r.figure,
        cells.join(" | "),
        r.unit
    );
}

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

type Measured = Vec<(String, &'static str, bool, Option<f64>)>;

async fn run_phase(
    args: &Args,
    phase: &str,
    target: &str,
    outpost: &Path,
) -> anyhow::Result<Measured> {
    let r = Running::start(args, target, outpost, phase == "drain")?;
    let collector_id = format!("bench-collector-{:08x}", fastrand::u32(..));
    let col = Collector::start(r.up_port, r.filter, &collector_id).await?;
    // Let a bridge connect upstream before measuring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match phase {
        "cpu" => {
            // CPU per reading at a sensor's pace: the measured process is
            // the whole gateway (outpost: broker, outbox and uplink; the
            // bridge: mosquitto), not the upstream.
            let mut rows = Vec::new();
            for &rate in &args.cpu_rates {
                let c0 = procs::cpu_secs(r.pid());
                let run = paced(args, &r, &col, target, Pace::Spread(rate), args.cpu_secs).await?;
                let cpu = procs::cpu_secs(r.pid()) - c0;
                rows.push((
                    format!("CPU-ms per 1000 readings, {rate}/s"),
                    "ms",
                    false,
                    Some(cpu * 1000.0 / run.total.max(1) as f64 * 1000.0),
                ));
                col.clear();
            }
            Ok(rows)
        }
        "low" => {
            let mut rows = Vec::new();
            for (rate, secs) in [
                (args.low_rate, args.low_secs),
                (args.high_rate, args.high_secs),
            ] {
                // outpost's WAL checkpoints run on a thread of their own.
                let checkpoints = || procs::thread_write_bytes(r.pid(), "outbox-checkpoi");
                let (w0, c0) = (procs::write_bytes(r.pid()), checkpoints());
                let run = paced(args, &r, &col, target, Pace::Spread(rate), secs).await?;
                let written = procs::write_bytes(r.pid()).saturating_sub(w0);
                let by_checkpoints = checkpoints().saturating_sub(c0);
                rows.push((
                    format!("bytes written per reading, {rate}/s"),
                    "B",
                    false,
                    Some(written as f64 / run.total as f64),
                ));
                rows.push((
                    format!("of which WAL checkpoints, {rate}/s"),
                    "%",
                    false,
                    (target != "bridge" && written > 0)
                        .then(|| 100.0 * by_checkpoints as f64 / written as f64),
                ));
                col.clear();
            }
            Ok(rows)
        }
        "paced" => {
            let (rate, secs) = (args.paced_rate, args.paced_secs);
            // The disk right before and right after, in the state
            // directory, at the same rate for as long: the PUBACK goal is
            // relative to its fsync p99. A host's slow spells last seconds
            // to minutes; the two together bracket the run.
            let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let n = (rate * secs) as usize;
            let probe = || {
                let dir = r.dir.path().to_path_buf();
                tokio::task::spawn_blocking(move || procs::fsync_paced(&dir, n, every))
            };
            let before = probe().await??;
            let spread = paced(args, &r, &col, target, Pace::Spread(rate), secs).await?;
            let after = probe().await??;
            let mut both = [before.as_slice(), after.as_slice()].concat();
            both.sort_by(f64::total_cmp);
            let f99 = percentile(&both, 0.99);
            col.clear();
            let burst = paced(args, &r, &col, target, Pace::Lockstep(rate), secs).await?;
            let per = burst.publishers;
            let every = 1000 * per as u64 / rate.max(1);
            Ok(vec![
                (
                    format!("PUBACK p99, {rate}/s"),
                    "ms",
                    false,
                    Some(percentile(&spread.acks, 0.99)),
                ),
                (
                    format!("end-to-end p99, {rate}/s"),
                    "ms",
                    false,
                    Some(percentile(&spread.e2e, 0.99)),
                ),
                (
                    format!("disk fsync p99, {rate}/s just before"),
                    "ms",
                    false,
                    Some(percentile(&before, 0.99)),
                ),
                (
                    format!("disk fsync p99, {rate}/s just after"),
                    "ms",
                    false,
                    Some(percentile(&after, 0.99)),
                ),
                (
                    format!("PUBACK p99 minus fsync p99, {rate}/s"),
                    "ms",
                    false,
                    Some(percentile(&spread.acks, 0.99) - f99),
                ),
                (
                    format!("PUBACK p99, bursts of {per} every {every} ms"),
                    "ms",
                    false,
                    Some(percentile(&burst.acks, 0.99)),
                ),
                (
                    format!("end-to-end p99, bursts of {per} every {every} ms"),
                    "ms",
                    false,
                    Some(percentile(&burst.e2e, 0.99)),
                ),
            ])
        }
        "flat" => {
            let total = args.publishers * args.messages;
            let (w0, c0) = (procs::write_bytes(r.pid()), procs::cpu_secs(r.pid()));
            let start = Instant::now();
            load::publish_all(
                r.port,
                args.publishers,
                args.messages,
                args.pad,
                Pace::FlatOut,
            )
            .await?;
            col.wait(total, Duration::from_secs(15)).await;
            let secs = last_arrival(&col).map_or(start.elapsed(), |t| t.duration_since(start));
            let cpu = procs::cpu_secs(r.pid()) - c0;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let written = procs::write_bytes(r.pid()).saturating_sub(w0);
            let got = unique(&col);
            if got < total {
                eprintln!(
                    "{target}: {} of {total} readings never arrived",
                    total - got
                );
            }
            Ok(vec![
                (
                    format!(
                        "delivered readings/s, {}x{} flat out",
                        args.publishers, args.messages
                    ),
                    "/s",
                    true,
                    Some(got as f64 / secs.as_secs_f64()),
                ),
                (
                    "CPU-seconds per 1000 readings, flat out".into(),
                    "s",
                    false,
                    Some(cpu / got.max(1) as f64 * 1000.0),
                ),
                (
                    "bytes written per reading, flat out".into(),
                    "B",
                    false,
                    Some(written as f64 / total as f64),
                ),
            ])
        }
        "drain" => {
            drop(col);
            // The cloud goes away (keeping the collector's session); the
            // backlog queues.
            let mut r = r;
            if let Some(up) = r.upstream.take() {
                procs::stop_gracefully(up);
            }
            let publishers = 20;
            let each = args.backlog / publishers;
            load::publish_all(r.port, publishers, each, args.pad, Pace::FlatOut).await?;
            let total = each * publishers;
            // The cloud comes back.
            r.upstream = Some(procs::upstream(r.dir.path(), r.up_port, true)?);
            let col = Collector::start(r.up_port, r.filter, &collector_id).await?;
            col.wait(total, Duration::from_secs(20)).await;
            let times: Vec<Instant> = col
                .arrivals
                .lock()
                .map(|a| a.iter().map(|(_, _, t)| *t).collect())
                .unwrap_or_default();
            let (first, last) = (times.iter().min().copied(), times.iter().max().copied());
            let got = unique(&col);
            if got < total {
                eprintln!(
                    "{target}: {} of {total} backlog readings never arrived",
                    total - got
                );
            }
            let rate = first
                .zip(last)
                .map(|(a, b)| b.duration_since(a).as_secs_f64())
                .filter(|s| *s > 0.0)
                .map(|s| got as f64 / s);
            Ok(vec![(
                format!("backlog drain, {total} queued in an outage"),
                "/s",
                true,
                rate,
            )])
        }
        "idle" | "wills" | "bigpacket" | "subs" | "corpus" => {
            drop(col);
            broker_only(args, phase, r.port, r.pid()).await
        }
        other => bail!(
            "unknown phase `{other}` (cpu, low, paced, flat, drain, idle, wills, bigpacket, subs, corpus)"
        ),
    }
}

/// Distinct readings that arrived.
/// What one paced run observed.
struct PacedRun {
    publishers: usize,
    total: usize,
    /// Publish-to-PUBACK latencies (ms), sorted.
    acks: Vec<f64>,
    /// Publish-to-upstream latencies (ms), sorted.
    e2e: Vec<f64>,
}

/// `rate` readings a second for `secs` from up to 20 publishers, then
/// the wait for the last of them upstream (and for outpost's last
/// deletes and the bridge's next autosave, so the bytes they write are
/// counted).
async fn paced(
    args: &Args,
    r: &Running,
    col: &Collector,
    target: &str,
    pace: Pace,
    secs: u64,
) -> anyhow::Result<PacedRun> {
    let rate = match pace {
        Pace::Spread(rate) | Pace::Lockstep(rate) => rate,
        Pace::FlatOut => bail!("a paced run needs a rate"),
    };
    let publishers = (rate as usize).clamp(1, 20);
    let each = (rate * secs) as usize / publishers;
    let total = each * publishers;
    let (mut acks, _) = load::publish_all(r.port, publishers, each, args.pad, pace).await?;
    col.wait(total, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut e2e: Vec<f64> = col
        .arrivals
        .lock()
        .map(|a| a.iter().map(|(us, _, _)| *us as f64 / 1000.0).collect())
        .unwrap_or_default();
    acks.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    if args.quantiles {
        let q = |v: &[f64]| {
            [0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0]
                .map(|p| format!("{:.2}", percentile(v, p)))
                .join(" ")
        };
        println!(
            "  {target}, {pace:?}: PUBACK p50 p90 p95 p98 p99 p99.5 p99.9 max: {} ms",
            q(&acks)
        );
        println!(
            "  {target}, {pace:?}: end-to-end p50 p90 p95 p98 p99 p99.5 p99.9 max: {} ms",
            q(&e2e)
        );
    }
    let lost = total.saturating_sub(unique(col));
    if lost > 0 {
        eprintln!("{target}: {lost} of {total} readings never arrived ({pace:?})");
    }
    Ok(PacedRun {
        publishers,
        total,
        acks,
        e2e,
    })
}

fn unique(col: &Collector) -> usize {
    col.arrivals
        .lock()
        .map(|a| {
            a.iter()
                .map(|(_, k, _)| k.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
        .unwrap_or(0)
}

fn last_arrival(col: &Collector) -> Option<Instant> {
    col.arrivals
        .lock()
        .ok()
        .and_then(|a| a.iter().map(|(_, _, t)| *t).max())
}
