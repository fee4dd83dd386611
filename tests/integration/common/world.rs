//! The preamble most tests share, folded: a real upstream mosquitto, a
//! temp directory, a free port for outpost's local broker, the config
//! header every test writes, and outpost started on the result.
//!
//! ```ignore
//! let w = World::new("");                       // upstream + dir + port
//! let col = w.collect("site1/#").await;         // optional: watch upstream
//! let op = w.start(&w.site().mqtt("", ""));      // outpost on a template
//! ```

use std::path::{Path, PathBuf};

use super::{free_port, Collector, Outpost, TbServer, Upstream};

/// One test's world.
pub struct World {
    pub up: Upstream,
    pub dir: tempfile::TempDir,
    /// outpost's local broker port.
    pub port: u16,
    /// ThingsBoard's transport rules in front of the upstream, when the
    /// test plays ThingsBoard (see [`World::thingsboard`]).
    pub tb: Option<TbServer>,
}

impl World {
    /// Starts the upstream mosquitto with `upstream_extra` config lines.
    pub fn new(upstream_extra: &str) -> World {
        World {
            up: Upstream::start(upstream_extra),
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            tb: None,
        }
    }

    /// [`World::new`] playing ThingsBoard: outpost reaches the upstream
    /// through [`TbServer`], which parses every uplink as ThingsBoard's
    /// transport does and fails the test, when the world drops, if it would
    /// have closed a session or dropped a message.
    pub async fn thingsboard(upstream_extra: &str) -> World {
        let mut w = World::new(upstream_extra);
        w.tb = Some(TbServer::start(w.up.port).await);
        w
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What a config template is made from.
    pub fn site(&self) -> Site {
        Site {
            dir: self.dir.path().to_path_buf(),
            port: self.port,
            url: self
                .tb
                .as_ref()
                .map_or_else(|| self.up.url(), TbServer::url),
        }
    }

    /// A persistent subscriber on the upstream broker.
    pub async fn collect(&self, filter: &str) -> Collector {
        Collector::start(self.up.port, filter).await
    }

    /// Starts outpost on `config` (written into the test's directory).
    pub fn start(&self, config: &str) -> Outpost {
        Outpost::start(self.dir.path(), self.port, config)
    }

    /// [`World::start`] with extra environment variables.
    pub fn start_with_env(&self, config: &str, env: &[(&str, &str)]) -> Outpost {
        Outpost::start_with_env(self.dir.path(), self.port, config, env)
    }
}

/// Where a test's outpost lives: its state directory, its local port and
/// the upstream's URL.
#[derive(Debug, Clone)]
pub struct Site {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
}

impl Site {
    /// The lines every test config starts with: the state directory, debug
    /// logs for outpost, the local broker on the test's port (plus
    /// `broker` lines), an outbox with `synchronous = "normal"` (plus
    /// `store` lines).
    pub fn header(&self, broker: &str, store: &str) -> String {
        format!(
            r#"state_dir = "{dir}"
log_level = "info,outpost=debug"

[broker]
listen = "127.0.0.1:{port}"
{broker}

[store]
synchronous = "normal"
{store}
"#,
            dir = self.dir.display(),
            port = self.port,
        )
    }

    /// The default test config: one route `sensors/+/telemetry` to the mqtt
    /// sink `up` on the upstream, topic `site1/{device}/telemetry`, fast
    /// reconnects. `store` adds `[store]` keys, `extra_sink` adds keys to
    /// `[sink.up]` (and may open further tables after them).
    pub fn mqtt(&self, store: &str, extra_sink: &str) -> String {
        let reconnect = if extra_sink.contains("reconnect_") {
            ""
        } else {
            "reconnect_min = \"200ms\"\nreconnect_max = \"1s\""
        };
        format!(
            r#"{header}
[[route]]
topic = "sensors/+/telemetry"
sink = "up"

[sink.up]
type = "mqtt"
url = "{url}"
client_id = "outpost-test-{rand}"
topic = "site1/{{device}}/telemetry"
keep_alive = "5s"
{reconnect}
{extra_sink}
"#,
            header = self.header("max_payload = \"16 KiB\"", store),
            url = self.url,
            rand = fastrand::u32(..),
        )
    }
}

/// The default test config (see [`Site::mqtt`]) for a directory, port and
/// upstream URL given one by one.
pub fn config(
    dir: &Path,
    local_port: u16,
    upstream_url: &str,
    store: &str,
    extra_sink: &str,
) -> String {
    Site {
        dir: dir.to_path_buf(),
        port: local_port,
        url: upstream_url.to_string(),
    }
    .mqtt(store, extra_sink)
}
