//! The real `outpost` binary, started on a config the test writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::process::{kill, wait_exit};
use super::sqlite;
use super::wait_until;

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

    /// outpost's resident memory now, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// outpost's peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
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
        sqlite::queued(&self.outbox())
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Outpost {
    /// `outpost status` as a person reads it.
    pub fn status_text(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .expect("outpost status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

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
