//! `[health]` and `[remote]`: outpost's own telemetry and its remote
//! configuration through ThingsBoard.

use std::time::Duration;

use serde::Deserialize;

use super::problem::{Problem, Problems};
use crate::units::Seconds;

/// `[health]`: outpost's own telemetry on ThingsBoard.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Health telemetry period on outpost's own ThingsBoard device.
    #[serde(default = "default_health_interval")]
    pub interval: Seconds,
}

fn default_health_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: default_health_interval(),
        }
    }
}

/// `[remote]`: configuration changes from ThingsBoard shared attributes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Take configuration from ThingsBoard (the first ThingsBoard sink).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A changed sink that does not connect within this is rolled back.
    #[serde(default = "default_rollback_after")]
    pub rollback_after: Seconds,
    /// May a remote change set file paths (inside the state directory)?
    #[serde(default)]
    pub allow_paths: bool,
}

fn default_true() -> bool {
    true
}
fn default_rollback_after() -> Seconds {
    Seconds(Duration::from_secs(60))
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            enabled: true,
            rollback_after: default_rollback_after(),
            allow_paths: false,
        }
    }
}

pub(super) fn check(health: &HealthConfig, remote: &RemoteConfig, problems: &mut Vec<Problem>) {
    let day = Duration::from_secs(86_400);
    if health.interval.0 < Duration::from_secs(1) || health.interval.0 > day {
        problems.add("health.interval", "must be between 1s and 1d");
    }
    if remote.rollback_after.0 < Duration::from_secs(1) || remote.rollback_after.0 > day {
        problems.add("remote.rollback_after", "must be between 1s and 1d");
    }
}
