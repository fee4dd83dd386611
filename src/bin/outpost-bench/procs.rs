//! The processes a benchmark run starts, and what /proc says about them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A directory under the system temp dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> anyhow::Result<ScratchDir> {
        let p =
            std::env::temp_dir().join(format!("outpost-bench-{name}-{:08x}", fastrand::u32(..)));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        // Started as root, mosquitto drops to its own user: let it write here.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        Ok(ScratchDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(outpost::net::free_loopback_port(None)?)
}

/// Waits until something listens on `port` (read from the kernel's table,
/// without connecting).
pub fn wait_listening(port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if outpost::net::is_listening(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nothing listens on port {port} after 15s")
}

pub fn mosquitto(dir: &Path, name: &str, conf: &str, port: u16) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf)?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start mosquitto (apt-get install -y mosquitto)")?;
    let p = Proc(child);
    wait_listening(port)?;
    Ok(p)
}

/// The cloud: a plain mosquitto. With `persist`, a graceful stop keeps the
/// collector's session, so nothing sent while it reconnects is missed.
pub fn upstream(dir: &Path, port: u16, persist: bool) -> anyhow::Result<Proc> {
    let persistence = if persist {
        format!(
            "persistence true\npersistence_location {}/\nautosave_interval 0\n",
            dir.display()
        )
    } else {
        "persistence false\n".to_string()
    };
    mosquitto(
        dir,
        "upstream",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\
             max_queued_messages 0\nmax_inflight_messages 0\nmax_connections -1\n"
        ),
        port,
    )
}

/// Stops a mosquitto gracefully (it writes its persistence file).
pub fn stop_gracefully(mut p: Proc) {
    let _ = Command::new("kill").arg(p.pid().to_string()).status();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = p.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The baseline: a mosquitto bridge forwarding `bench/#` at QoS 1 to the
/// upstream, with persistence saved every second.
pub fn bridge(dir: &Path, port: u16, up_port: u16) -> anyhow::Result<Proc> {
    let data = dir.join("bridge");
    std::fs::create_dir_all(&data)?;
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    mosquitto(
        dir,
        "bridge",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n\
             persistence true\npersistence_location {data}/\nautosave_interval 1\n\
             max_queued_messages 0\nmax_inflight_messages 0\n\
             connection up\naddress 127.0.0.1:{up_port}\ntopic bench/# out 1\n\
             cleansession false\nrestart_timeout 1\nbridge_protocol_version mqttv311\n",
            data = data.display()
        ),
        port,
    )
}

/// outpost with a route `bench/+/telemetry` to the upstream.
pub fn outpost(
    bin: &Path,
    dir: &Path,
    port: u16,
    up_port: u16,
    synchronous: &str,
    extra_sink: &str,
) -> anyhow::Result<Proc> {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{dir}"
log_level = "warn"
[broker]
listen = "127.0.0.1:{port}"
max_connections = 5000
[store]
synchronous = "{synchronous}"
max_bytes = "2 GiB"
[[route]]
topic = "bench/+/telemetry"
sink = "up"
[sink.up]
type = "mqtt"
url = "mqtt://127.0.0.1:{up_port}"
client_id = "outpost-bench-{r:08x}"
topic = "up/{{device}}"
{inflight}reconnect_min = "100ms"
reconnect_max = "500ms"
{extra_sink}
"#,
            dir = dir.display(),
            r = fastrand::u32(..),
            inflight = if extra_sink.contains("inflight") {
                ""
            } else {
                "inflight = 100\n"
            },
        ),
    )?;
    let child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let p = Proc(child);
    wait_listening(port)?;
    Ok(p)
}

/// Another broker to compare (a binary that takes its port as the first
/// argument).
pub fn candidate(cmd: &Path, port: u16) -> anyhow::Result<Proc> {
    let child = Command::new(cmd)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", cmd.display()))?;
    let p = Proc(child);
    wait_listening(port)?;
    Ok(p)
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// [`write_bytes`] of the threads of `pid` whose name begins with `name`
/// (the kernel keeps 15 bytes of a thread's name).
pub fn thread_write_bytes(pid: u32, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(name))
        })
        .map(|t| {
            let tid = t.file_name().to_string_lossy().into_owned();
            proc_field(pid, &format!("task/{tid}/io"), "write_bytes:")
        })
        .sum()
}

/// Bytes the process caused to be written to storage (page-dirtying time).
pub fn write_bytes(pid: u32) -> u64 {
    proc_field(pid, "io", "write_bytes:")
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:")
}

/// CPU seconds (user + system) used so far.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime, in USER_HZ (1/100 s on Linux).
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The disk's own fsync latency in `dir`: p50 and p99 in ms over `n`
/// writes of 4 KiB, each followed by fdatasync.
pub fn fsync_latency(dir: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    let lat = fsync_paced(dir, n, Duration::ZERO)?;
    Ok((crate::percentile(&lat, 0.5), crate::percentile(&lat, 0.99)))
}

/// The latencies (ms, sorted) of `n` fsyncs as [`fsync_latency`] makes
/// them, one every `every`: over the time a paced phase runs, the disk's
/// own tail (a host's stalls come and go in seconds, which 300 fsyncs in
/// a row do not see).
pub fn fsync_paced(dir: &Path, n: usize, every: Duration) -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0u8; 4096];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        if let Some(wait) = every
            .checked_mul(u32::try_from(i).unwrap_or(u32::MAX))
            .and_then(|at| at.checked_sub(start.elapsed()))
        {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = std::fs::remove_file(&path);
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}
