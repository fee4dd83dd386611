//! outpost-bench: end-to-end throughput, latency and memory of the real binary.
//!
//! Starts a private upstream `mosquitto` on a free loopback port, starts the
//! `outpost` binary that sits next to this one (build both with
//! `cargo build --release --bins`), drives N MQTT publishers at QoS 1 against
//! outpost's local broker, and collects everything upstream. It prints, per
//! ingest mode:
//!
//! - accepted msgs/s (local PUBACKs) and delivered msgs/s (arrivals upstream),
//! - publish-to-PUBACK latency p50/p99 (what a sensor waits),
//! - end-to-end latency p50/p99 (sensor publish to upstream arrival),
//! - peak RSS of the outpost process (VmHWM),
//! - bytes written per message (from /proc/PID/io).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Parser, Debug)]
#[command(about = "Measure outpost end to end against a real upstream mosquitto")]
struct Args {
    /// Concurrent publishers (one MQTT connection each).
    #[arg(long, default_value_t = 20)]
    publishers: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Payload padding in bytes (on top of ~40 bytes of JSON).
    #[arg(long, default_value_t = 60)]
    pad: usize,
    /// Ingest modes to measure, side by side: `link` (rumqttd acknowledges;
    /// records taken off its in-process link) and/or `front` (outpost's MQTT
    /// front holds each PUBACK until the record is committed).
    #[arg(long, value_delimiter = ',', default_value = "front,link")]
    modes: Vec<String>,
    /// Total offered rate in msgs/s across all publishers (0: as fast as
    /// acknowledgements allow). A paced run shows latency without queueing.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Outbox `synchronous` setting: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
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
    if Command::new("mosquitto").arg("-h").output().is_err() {
        bail!("mosquitto is not installed: apt-get install -y mosquitto");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "outpost-bench: {} publishers x {} messages, QoS 1, ~{} B payload, synchronous = {}, offered rate = {}",
        args.publishers,
        args.messages,
        args.pad + 40,
        args.synchronous,
        if args.rate == 0 { "max".to_string() } else { format!("{} msgs/s", args.rate) }
    );
    println!(
        "{:<6} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "mode",
        "accept/s",
        "deliver/s",
        "ack p50",
        "ack p99",
        "e2e p50",
        "e2e p99",
        "peak RSS",
        "disk B/msg",
        "dups"
    );
    for mode in &args.modes {
        let r = rt.block_on(run_once(&args, &outpost, mode))?;
        println!(
            "{:<6} {:>10.0} {:>11.0} {:>7.2}ms {:>7.2}ms {:>7.1}ms {:>7.1}ms {:>6.1}MiB {:>10} {:>6} {:>6}",
            mode,
            r.accepted_per_s,
            r.delivered_per_s,
            r.ack_p50_ms,
            r.ack_p99_ms,
            r.e2e_p50_ms,
            r.e2e_p99_ms,
            r.peak_rss_kib as f64 / 1024.0,
            r.disk_per_msg
                .map(|b| format!("{b:.0}"))
                .unwrap_or_else(|| "n/a".into()),
            r.duplicates,
            r.lost,
        );
    }
    Ok(())
}

struct Report {
    accepted_per_s: f64,
    delivered_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    peak_rss_kib: u64,
    disk_per_msg: Option<f64>,
    duplicates: usize,
    /// Acknowledged by outpost, never delivered.
    lost: usize,
}

/// A directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("outpost-bench-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(ScratchDir(p))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after 15s")
}

/// Waits until outpost's local listener is up (without connecting to it).
fn wait_listening(port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if outpost::net::is_listening(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("outpost did not listen on port {port} within 15s")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// (write_bytes, wchar) of a process.
fn io_written(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("write_bytes:"), field("wchar:"))
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_once(args: &Args, outpost: &PathBuf, mode: &str) -> anyhow::Result<Report> {
    let ack_after_commit = match mode {
        "front" => true,
        "link" => false,
        other => bail!("unknown mode `{other}` (use front or link)"),
    };
    let dir = ScratchDir::new()?;
    // Started as root, mosquitto drops to its own user: let it read here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;

    let up_port = free_port()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {up_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n"),
    )?;
    let _mosquitto = Killed(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mosquitto")?,
    );
    wait_port(up_port)?;

    let local_port = free_port()?;
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{dir}"
log_level = "warn"
[broker]
listen = "127.0.0.1:{local_port}"
ack_after_commit = {ack_after_commit}
max_connections = {conns}
[store]
synchronous = "{sync}"
max_bytes = "2 GiB"
[[route]]
topic = "bench/+/telemetry"
sink = "up"
[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:{up_port}"
client_id = "outpost-bench"
topic = "up/{{device}}"
inflight = 100
"#,
            dir = dir.path().display(),
            conns = args.publishers + 10,
            sync = args.synchronous,
        ),
    )?;
    let child = Command::new(outpost)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start outpost")?;
    let pid = child.id();
    let _outpost = Killed(child);
    wait_listening(local_port)?;

    let total = args.publishers * args.messages;
    let arrivals = Arc::new(Mutex::new(Vec::<(u64, String)>::with_capacity(total)));
    let collector = spawn_collector(up_port, arrivals.clone()).await?;

    let (w0, c0) = io_written(pid);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let (n, pad) = (args.messages, args.pad);
        let pace = (args.rate > 0)
            .then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
        tasks.push(tokio::spawn(publisher(local_port, p, n, pad, pace)));
    }
    let mut ack_lat = Vec::with_capacity(total);
    for t in tasks {
        ack_lat.extend(t.await??);
    }
    let accept_secs = start.elapsed().as_secs_f64();

    // Wait for everything, or until nothing has arrived for 10 s (a mode
    // that loses messages never completes).
    let mut last = (0, Instant::now());
    let mut deliver_secs = start.elapsed().as_secs_f64();
    loop {
        let n = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if n != last.0 {
            last = (n, Instant::now());
            deliver_secs = start.elapsed().as_secs_f64();
        }
        if n >= total || last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the last deletes commit before reading the I/O counters.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (w1, c1) = io_written(pid);
    let rss = peak_rss_kib(pid);
    collector.abort();

    let arrived = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut e2e = Vec::with_capacity(arrived.len());
    let mut duplicates = 0;
    for (lat_us, key) in &arrived {
        if seen.insert(key.clone()) {
            e2e.push(*lat_us as f64 / 1000.0);
        } else {
            duplicates += 1;
        }
    }
    let lost = total.saturating_sub(seen.len());
    e2e.sort_by(f64::total_cmp);
    ack_lat.sort_by(f64::total_cmp);
    let written = if w1 > w0 {
        w1 - w0
    } else {
        c1.saturating_sub(c0)
    };
    Ok(Report {
        accepted_per_s: total as f64 / accept_secs,
        delivered_per_s: total as f64 / deliver_secs,
        ack_p50_ms: percentile(&ack_lat, 0.50),
        ack_p99_ms: percentile(&ack_lat, 0.99),
        e2e_p50_ms: percentile(&e2e, 0.50),
        e2e_p99_ms: percentile(&e2e, 0.99),
        peak_rss_kib: rss,
        disk_per_msg: (written > 0).then(|| written as f64 / total as f64),
        duplicates,
        lost,
    })
}

async fn spawn_collector(
    port: u16,
    arrivals: Arc<Mutex<Vec<(u64, String)>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut opts = MqttOptions::new("bench-collector", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(opts, 64);
    client.subscribe("up/#", QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = now_us();
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let sent = v["values"]["sent_us"].as_u64().unwrap_or(now);
                    let key = format!("{}/{}", v["device"], v["values"]["seq"]);
                    if let Ok(mut a) = arrivals.lock() {
                        a.push((now.saturating_sub(sent), key));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("upstream subscription")??;
    Ok(task)
}

/// Publishes `n` messages and returns each one's publish-to-PUBACK latency (ms).
async fn publisher(
    port: u16,
    p: usize,
    n: usize,
    pad: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Vec<f64>> {
    let mut opts = MqttOptions::new(format!("bench-pub-{p}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 200);
    let padding = "x".repeat(pad);
    let feeder = tokio::spawn(async move {
        let mut tick = pace.map(tokio::time::interval);
        for seq in 0..n {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let payload = format!(
                "{{\"seq\":{seq},\"sent_us\":{},\"pad\":\"{padding}\"}}",
                now_us()
            );
            if client
                .publish(
                    format!("bench/dev{p}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent_at.insert(pkid, Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = sent_at.remove(&ack.pkid) {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok(_) => {}
            Err(e) => bail!("publisher {p}: {e}"),
        }
    }
    let client = feeder.await?;
    let _ = client.disconnect().await;
    Ok(lat)
}
