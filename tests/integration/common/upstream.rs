//! Debian's mosquitto on a free loopback port, standing in for the cloud.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::{kill, wait_exit};
use super::{free_port, require, wait_port};

/// A mosquitto password file with one user, readable by mosquitto's own
/// user. Keep the returned directory alive as long as the broker runs.
pub fn password_file(user: &str, password: &str) -> (tempfile::TempDir, PathBuf) {
    password_file_with(&[(user, password)])
}

/// [`password_file`] with several users, made by `mosquitto_passwd`.
pub fn password_file_with(users: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    require("mosquitto_passwd", "mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let file = dir.path().join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let made = cmd
            .arg(&file)
            .args([user, password])
            .output()
            .expect("mosquitto_passwd");
        assert!(made.status.success(), "{made:?}");
    }
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
        // Unbounded queues for the test's collector, unless the test sets
        // them (mosquitto 2.0.11 drops a client after an ACL-denied QoS 1
        // publish when max_queued_messages is 0).
        let queues = if extra.contains("max_queued_messages") {
            ""
        } else {
            "max_queued_messages 0\nmax_queued_bytes 0\n"
        };
        let text = format!(
            "listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {data}/\n\
             autosave_interval 0\n\
             {queues}\
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

    /// SIGHUP: mosquitto reads its password and ACL files again.
    pub fn reload(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill(c, "HUP");
        }
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
