//! `[store]`: the durable outbox's file and bounds.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use crate::units::{ByteSize, Seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Make room by deleting the oldest queued records (counted as dropped).
    DropOldest,
    /// Keep what is queued and refuse new records (counted as refused).
    RejectNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync the WAL at checkpoints only: survives a crash of outpost, may lose
    /// the last transactions on power loss.
    Normal,
    /// fsync the WAL on every commit: survives power loss.
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Outbox database file; relative paths are under `state_dir`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "default_max_age")]
    pub max_age: Seconds,
    #[serde(default = "default_full_policy")]
    pub full_policy: FullPolicy,
    #[serde(default = "default_synchronous")]
    pub synchronous: Synchronous,
    /// Bound on the dead letters (records a platform can never take); when
    /// reached the oldest go, counted.
    #[serde(default = "default_dead_letters_max_bytes")]
    pub dead_letters_max_bytes: ByteSize,
    /// Space held back on the outbox's filesystem (a file beside it), given
    /// up when the disk fills so that deliveries can still be deleted and a
    /// drain finish; 0 holds none.
    #[serde(default = "default_disk_reserve")]
    pub disk_reserve: ByteSize,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("outbox.db")
}
fn default_max_bytes() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_max_age() -> Seconds {
    Seconds(Duration::from_secs(30 * 86_400))
}
fn default_full_policy() -> FullPolicy {
    FullPolicy::DropOldest
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
fn default_dead_letters_max_bytes() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_disk_reserve() -> ByteSize {
    ByteSize(16 << 20)
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            full_policy: default_full_policy(),
            synchronous: default_synchronous(),
            dead_letters_max_bytes: default_dead_letters_max_bytes(),
            disk_reserve: default_disk_reserve(),
        }
    }
}

pub(super) fn check(s: &StoreConfig, problems: &mut Vec<Problem>) {
    if s.max_bytes.0 < 4096 {
        problems.add("store.max_bytes", "must be at least 4 KiB");
    }
    if s.max_bytes.0 > 1 << 40 {
        problems.add("store.max_bytes", "must be at most 1 TiB");
    }
    if s.max_age.0 < Duration::from_secs(1) || s.max_age.0 > Duration::from_secs(10 * 365 * 86_400)
    {
        problems.add("store.max_age", "must be between 1s and 10 years");
    }
    if s.dead_letters_max_bytes.0 < 4096 || s.dead_letters_max_bytes.0 > 1 << 40 {
        problems.add(
            "store.dead_letters_max_bytes",
            "must be between 4 KiB and 1 TiB",
        );
    }
    if s.disk_reserve.0 > 1 << 30 {
        problems.add("store.disk_reserve", "must be at most 1 GiB (0 holds none)");
    }
}
