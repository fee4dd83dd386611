//! A small ext4 filesystem on a loop device, as a Pi's SD card partition:
//! it fills, it fails. Needs root (CI runs as root) and e2fsprogs. Every
//! mount and loop device made here is undone on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

pub struct Image {
    /// Where the filesystem is mounted.
    pub mnt: PathBuf,
    file: PathBuf,
    /// Loop devices attached so far (a remount attaches a new one).
    devices: Vec<String>,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Image {
    /// A fresh ext4 filesystem of `mib` MiB, no blocks reserved for root,
    /// remounted read-only by the kernel on an error (as Raspberry Pi OS
    /// mounts its root), mounted at `dir/mnt`.
    pub fn new(dir: &Path, mib: u32) -> Image {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the disk tests mount ext4 images on loop devices and need root (CI runs as root)"
        );
        require("mkfs.ext4", "e2fsprogs");
        require("losetup", "mount");
        let file = dir.join("disk.img");
        let f = std::fs::File::create(&file).expect("image file");
        f.set_len(u64::from(mib) << 20).expect("image size");
        run(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", &file.display().to_string()],
        );
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let mut img = Image {
            mnt,
            file,
            devices: Vec::new(),
        };
        img.mount();
        img
    }

    fn mount(&mut self) {
        let dev = run(
            "losetup",
            &["--find", "--show", &self.file.display().to_string()],
        );
        self.devices.push(dev.clone());
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "errors=remount-ro",
                &dev,
                &self.mnt.display().to_string(),
            ],
        );
        // Anyone may write (outpost runs as the test's user here anyway).
        run("chmod", &["1777", &self.mnt.display().to_string()]);
    }

    /// The kernel's name of the device mounted now (`loop3`).
    fn name(&self) -> String {
        self.devices
            .last()
            .and_then(|d| d.rsplit('/').next())
            .expect("mounted")
            .to_string()
    }

    /// An ext4 error, as a failing card causes one: the kernel aborts the
    /// journal and remounts the filesystem read-only.
    pub fn fail(&self) {
        std::fs::write(
            format!("/sys/fs/ext4/{}/trigger_fs_error", self.name()),
            "outpost test: the card failed",
        )
        .expect("trigger an ext4 error");
    }

    pub fn read_only(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mnt = self.mnt.display().to_string();
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&mnt.as_str())
                && f.get(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "ro" || o == "emergency_ro"))
        })
    }

    /// What a technician does after such an error: unmount (lazily:
    /// outpost still holds its files), check, mount again.
    pub fn repair(&mut self) {
        run("umount", &["-l", &self.mnt.display().to_string()]);
        let out = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.file)
            .output()
            .expect("e2fsck");
        // 0: clean, 1: errors corrected.
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "e2fsck: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.mount();
    }

    /// Bytes free on the filesystem.
    pub fn free(&self) -> u64 {
        let out = run(
            "df",
            &["--output=avail", "-B1", &self.mnt.display().to_string()],
        );
        out.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        for dev in &self.devices {
            // A device still held by a lazily unmounted filesystem is
            // detached once the last file on it closes.
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}
