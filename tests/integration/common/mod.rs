//! Test harness: real processes on loopback.
//!
//! - [`Upstream`]: Debian's `mosquitto` on a free loopback port, with a config
//!   the test writes, standing in for the cloud broker.
//! - [`Collector`]: a persistent-session subscriber on that broker, so that
//!   nothing published while it reconnects (or while the broker restarts) is
//!   missed by the test itself.
//! - [`Outpost`]: the real `outpost` binary, started on a config the test
//!   writes, stopped with SIGTERM or SIGKILL.
//!
//! Every process is killed when its handle drops, and every wait is bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Fails (never skips) when a tool the tests need is missing.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: the tests need it. Install it with `apt-get install -y {package}`"
    );
}

/// A free loopback port outside the kernel's ephemeral range, so that no
/// outgoing connection can take it before the process it is meant for binds.
pub fn free_port() -> u16 {
    outpost::net::free_loopback_port(None).expect("a free loopback port")
}

pub fn wait_port(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A mosquitto password file with one user, readable by mosquitto's own
/// user. Keep the returned directory alive as long as the broker runs.
pub fn password_file(user: &str, password: &str) -> (tempfile::TempDir, PathBuf) {
    require("mosquitto_passwd", "mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let file = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args([user, password])
        .output()
        .expect("mosquitto_passwd");
    assert!(made.status.success(), "{made:?}");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    (dir, file)
}

/// A real mosquitto broker on 127.0.0.1.
pub struct Upstream {
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

impl Upstream {
    /// Starts mosquitto with persistence (so a graceful restart keeps queued
    /// messages for the test's subscriber) and `extra` config lines.
    pub fn start(extra: &str) -> Upstream {
        require("mosquitto", "mosquitto mosquitto-clients");
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, mosquitto drops to its own user: let it write here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod the mosquitto dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {data}/\n\
             autosave_interval 0\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n\
             log_dest file {data}/mosquitto.log\n\
             log_type all\n\
             {extra}\n",
            data = dir.path().display()
        );
        let text = if extra.contains("allow_anonymous") {
            text
        } else {
            format!("{text}allow_anonymous true\n")
        };
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut up = Upstream {
            port,
            dir,
            conf,
            child: None,
        };
        up.spawn();
        up
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "mosquitto did not listen on {} (log: {})",
            self.port,
            self.log()
        );
    }

    /// Graceful stop: mosquitto writes its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "TERM");
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message seen by the collector.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    /// When the collector received it.
    pub at: Instant,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("upstream payload is JSON")
    }
}

/// A QoS 1, persistent-session subscriber on the upstream broker.
pub struct Collector {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(port: u16, filter: &str) -> Collector {
        let mut opts = MqttOptions::new(
            format!("collector-{}", fastrand::u64(..)),
            "127.0.0.1",
            port,
        );
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let filter = filter.to_string();
        let (subscribed, mut on_subscribed) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut s) = sink.lock() {
                            s.push(Seen {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                at: Instant::now(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), on_subscribed.recv())
            .await
            .expect("collector subscribed within 10s");
        Collector { seen, task }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages arrived; returns how many did.
    pub async fn wait_for(&self, n: usize, within: Duration) -> usize {
        let until = Instant::now() + within;
        while self.count() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.count()
    }

    /// Waits until no new message has arrived for `quiet`.
    pub async fn settle(&self, quiet: Duration, within: Duration) {
        let until = Instant::now() + within;
        let mut last = self.count();
        let mut since = Instant::now();
        while Instant::now() < until && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.count();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real outpost binary.
pub struct Outpost {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub local_port: u16,
    child: Option<Child>,
    starts: usize,
    env: Vec<(String, String)>,
}

/// A config for tests: local broker on `local_port`, one route
/// `sensors/+/telemetry` to the mqtt sink `up` at `upstream_url`, fast
/// reconnects. `extra_sink` and `extra` add keys to `[sink.up]` and to the
/// end of the file.
pub fn config(
    dir: &Path,
    local_port: u16,
    upstream_url: &str,
    store: &str,
    extra_sink: &str,
) -> String {
    format!(
        r#"state_dir = "{dir}"
log_level = "info,outpost=debug"

[broker]
listen = "127.0.0.1:{local_port}"
max_payload = "16 KiB"

[store]
synchronous = "normal"
{store}

[[route]]
topic = "sensors/+/telemetry"
sink = "up"

[sink.up]
type = "mqtt"
url = "{upstream_url}"
client_id = "outpost-test-{rand}"
topic = "site1/{{device}}/telemetry"
keep_alive = "5s"
{reconnect}
{extra_sink}
"#,
        dir = dir.display(),
        rand = fastrand::u32(..),
        reconnect = if extra_sink.contains("reconnect_") {
            ""
        } else {
            "reconnect_min = \"200ms\"\nreconnect_max = \"1s\""
        },
    )
}

impl Outpost {
    /// Writes `config_text` and starts outpost; waits until it runs.
    pub fn start(dir: &Path, local_port: u16, config_text: &str) -> Outpost {
        Outpost::start_with_env(dir, local_port, config_text, &[])
    }

    /// [`Outpost::start`] with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        local_port: u16,
        config_text: &str,
        env: &[(&str, &str)],
    ) -> Outpost {
        let config = dir.join("outpost.toml");
        std::fs::write(&config, config_text).expect("write outpost.toml");
        let mut o = Outpost {
            dir: dir.to_path_buf(),
            config,
            log: dir.join("outpost-0.log"),
            local_port,
            child: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        o.spawn();
        o
    }

    fn spawn(&mut self) {
        self.log = self.dir.join(format!("outpost-{}.log", self.starts));
        self.starts += 1;
        let log = std::fs::File::create(&self.log).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start outpost");
        self.child = Some(child);
        let started = wait_until(Duration::from_secs(15), || {
            self.log_text().contains("outpost running") || self.exited()
        });
        assert!(
            started && !self.exited(),
            "outpost did not start; its log:\n{}",
            self.log_text()
        );
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    pub fn alive(&mut self) -> bool {
        self.child.is_some() && !self.exited()
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("outpost is running");
        kill(&mut c, "TERM");
        match wait_exit(&mut c, Duration::from_secs(15)) {
            Some(s) => s,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "outpost did not stop within 15s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// Sends a signal (by name, e.g. "HUP") to the running process.
    pub fn signal(&mut self, sig: &str) {
        if let Some(c) = self.child.as_mut() {
            kill(c, sig);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, "KILL");
            let _ = c.wait();
        }
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Logs of every run so far.
    pub fn all_logs(&self) -> String {
        (0..self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("outpost-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.join("outbox.db")
    }

    /// Rows queued in the outbox, read from the file as another process would.
    pub fn queued(&self) -> i64 {
        queued(&self.outbox())
    }
}

pub fn queued(db: &Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap_or(-1)
}

pub fn counter(db: &Path, sink: &str, name: &str) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return -1;
    };
    conn.query_row(
        "SELECT value FROM counters WHERE sink = ?1 AND name = ?2",
        [sink, name],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes every message at QoS 1 over one connection and waits for all
/// PUBACKs. Returns the number acknowledged.
pub async fn publish_all(port: u16, client_id: &str, msgs: Vec<(String, Vec<u8>)>) -> usize {
    publish_paced(port, client_id, msgs, None).await
}

/// [`publish_all`], with an optional pause between publishes.
pub async fn publish_paced(
    port: u16,
    client_id: &str,
    msgs: Vec<(String, Vec<u8>)>,
    pace: Option<Duration>,
) -> usize {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 256);
    let n = msgs.len();
    let acked = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        acked
    });
    for (topic, payload) in msgs {
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
        if client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
    }
    let acked = tokio::time::timeout(Duration::from_secs(120), acked)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let _ = client.try_disconnect();
    acked
}

/// `count` readings for each of `devices` devices, payload `{"seq":N}`, on
/// `sensors/dev-K/telemetry`.
pub fn readings(devices: usize, count: usize) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    (0..devices)
        .map(|d| {
            let dev = format!("dev-{d}");
            let msgs = (0..count)
                .map(|seq| {
                    (
                        format!("sensors/{dev}/telemetry"),
                        format!("{{\"seq\":{seq}}}").into_bytes(),
                    )
                })
                .collect();
            (dev, msgs)
        })
        .collect()
}

/// Publishes `readings()` from one client per device, concurrently. Returns
/// the total acknowledged.
pub async fn publish_devices(port: u16, devices: usize, count: usize) -> usize {
    publish_devices_paced(port, devices, count, None).await
}

/// [`publish_devices`], each publisher pausing `pace` between readings.
pub async fn publish_devices_paced(
    port: u16,
    devices: usize,
    count: usize,
    pace: Option<Duration>,
) -> usize {
    let mut tasks = Vec::new();
    for (dev, msgs) in readings(devices, count) {
        tasks.push(tokio::spawn(async move {
            publish_paced(port, &format!("pub-{dev}"), msgs, pace).await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

/// What arrived upstream, per device: the sequence numbers in arrival order.
pub fn arrivals(seen: &[Seen]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in seen {
        let v = s.json();
        let dev = v["device"].as_str().unwrap_or_default().to_string();
        let seq = v["values"]["seq"]
            .as_u64()
            .expect("seq in upstream payload");
        out.entry(dev).or_default().push(seq);
    }
    out
}

/// Checks that every device's readings 0..count arrived, and that the order
/// of first arrivals is the order of publishing. Returns the duplicate count.
pub fn assert_complete_and_ordered(seen: &[Seen], devices: usize, count: usize) -> usize {
    let got = arrivals(seen);
    let mut duplicates = 0;
    for d in 0..devices {
        let dev = format!("dev-{d}");
        let seqs = got.get(&dev).cloned().unwrap_or_default();
        let mut firsts = Vec::new();
        let mut set = HashSet::new();
        for s in &seqs {
            if set.insert(*s) {
                firsts.push(*s);
            } else {
                duplicates += 1;
            }
        }
        let missing: Vec<u64> = (0..count as u64).filter(|s| !set.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "{dev}: {} of {count} readings missing upstream, first few: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{dev}: readings arrived out of order"
        );
    }
    duplicates
}

/// The sequence without repeats, each value at its first arrival.
pub fn first_arrivals(seqs: &[u64]) -> Vec<u64> {
    let mut set = HashSet::new();
    seqs.iter().copied().filter(|s| set.insert(*s)).collect()
}

/// A QoS 1 subscriber on `filter`; messages arrive on the receiver.
pub async fn subscriber(
    port: u16,
    id: &str,
    filter: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("SUBACK within 10s")
        .expect("subscriber running");
    (client, rx)
}

/// The next message, within 10 s.
pub async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10s")
        .expect("subscriber running")
}

/// A pseudo-terminal pair made by `socat`: outpost opens `device`, the test
/// plays the sensor on `sensor`. Both are symlinks in the test's directory;
/// dropping the pair (or [`Pty::unplug`]) removes them, as unplugging a USB
/// adapter removes its `/dev/ttyUSB*` node.
pub struct Pty {
    pub device: PathBuf,
    pub sensor: PathBuf,
    child: Option<Child>,
}

impl Pty {
    pub fn new(dir: &Path, name: &str) -> Pty {
        require("socat", "socat");
        let mut pty = Pty {
            device: dir.join(format!("{name}-dev")),
            sensor: dir.join(format!("{name}-sensor")),
            child: None,
        };
        pty.plug();
        pty
    }

    /// Starts socat (again), with the same paths.
    pub fn plug(&mut self) {
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.device.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.sensor.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(5), || self.device.exists()
                && self.sensor.exists()),
            "socat made no PTY pair at {}",
            self.device.display()
        );
    }

    /// Kills socat: both ends vanish.
    pub fn unplug(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.device);
        let _ = std::fs::remove_file(&self.sensor);
    }

    /// The sensor end, opened for writing and reading.
    pub fn sensor_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.sensor)
            .expect("open the sensor end of the PTY")
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.unplug();
    }
}

impl Outpost {
    /// The daemon's status snapshot (`outpost status --json`).
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .expect("outpost status");
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}
