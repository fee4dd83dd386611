//! Serial sensors on real pseudo-terminals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{require, wait_until};

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
