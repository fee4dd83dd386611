//! The configuration file: its types, how it is found, and how it is checked.
//!
//! The file is TOML and strict: an unknown key is an error, not a silently
//! ignored typo. Checking never stops at the first problem: every section is
//! deserialized on its own and then cross-checked (a route naming a sink that
//! does not exist, a topic template with an unknown placeholder, ...), so that
//! `outpost check-config` can print every problem with its key path at once.
//!
//! One file per section: [`broker`], [`store`], [`route`], [`sink`] (one
//! file per sink type), [`serial`], [`ops`] (health, remote), [`http`]
//! (the status page and HTTP ingest); [`overlay`] is
//! the remote configuration merged on top; [`secret`] says which keys are
//! never printed.

pub mod broker;
pub mod guard;
pub mod http;
pub mod init;
pub mod ops;
pub mod overlay;
mod problem;
mod read;
pub mod route;
pub mod secret;
pub mod serial;
pub mod sink;
pub mod store;
pub mod stored;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use broker::{BrokerConfig, BrokerTlsConfig};
pub use http::HttpConfig;
pub use ops::{HealthConfig, RemoteConfig};
pub use problem::{ConfigError, Problem, Problems};
pub use route::{ReadingsConfig, RouteConfig};
pub use serial::SerialConfig;
pub use sink::{
    MqttSinkConfig, PayloadFormat, ProvisionCredentials, SinkConfig, TbMode, ThethingsioSinkConfig,
    ThingsboardSinkConfig, ThingspeakSinkConfig, TtnSinkConfig,
};
pub use store::{FullPolicy, StoreConfig, Synchronous};

use read::{array, section};

/// The default configuration, shipped as `/etc/outpost/outpost.toml` and
/// embedded in the binary so that `outpost run` works with no file at all.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/outpost.toml");

/// Where the packaged service keeps its config.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/outpost/outpost.toml";

/// State directory used when running on the built-in default config, so a
/// newcomer's first run needs no root and writes nothing outside the cwd.
pub const LOCAL_STATE_DIR: &str = "./outpost-state";

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub log_level: String,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub routes: Vec<RouteConfig>,
    pub readings: ReadingsConfig,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub serial: Vec<SerialConfig>,
    pub health: HealthConfig,
    pub remote: RemoteConfig,
    pub http: HttpConfig,
}

impl Config {
    /// The outbox file, resolved against the state directory.
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.state_dir.join(&self.store.path)
        }
    }

    /// The local device topics for RPC and attributes: the first
    /// ThingsBoard sink's, else the defaults.
    pub fn device_topics(&self) -> crate::topic::DeviceTopics {
        self.sinks
            .values()
            .find_map(|s| match s {
                SinkConfig::Thingsboard(t) => Some(t.device_topics()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// Where a config came from, for messages and for the state-dir rule.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::BuiltIn => f.write_str("built-in default config"),
        }
    }
}

/// A loaded config, with what the remote overlay contributed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// The file (or built-in) table the overlay is merged onto.
    pub base: toml::Table,
    pub overlay: overlay::Overlay,
    /// Why a stored overlay was not used (the file's config runs).
    pub overlay_error: Option<String>,
    /// The file's config alone (what a remote change is checked against).
    pub file: Config,
    /// `overlay` is a change being tried, not yet confirmed.
    pub trying: bool,
    /// The last confirmed overlay (to go back to).
    pub last_good: overlay::Overlay,
    /// The last change that was set aside, and why.
    pub rolled_back: Option<stored::Failed>,
}

impl Loaded {
    /// What `outpost check-config` prints for a valid config: a summary,
    /// and where each value comes from (secrets redacted).
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let c = &self.config;
        let mut out = format!(
            "{}: ok ({} route(s), {} sink(s), {} serial port(s), outbox {})\n",
            self.source,
            c.routes.len(),
            c.sinks.len(),
            c.serial.len(),
            c.store_path().display()
        );
        if let Some(f) = &self.rolled_back {
            let _ = writeln!(
                out,
                "the last remote change was set aside (config_status = rolled_back): {}",
                f.error
            );
        }
        if let Some(e) = &self.overlay_error {
            let _ = writeln!(out, "remote configuration (from ThingsBoard) NOT used: {e}");
            return out;
        }
        if self.overlay.is_empty() {
            let _ = writeln!(out, "every value comes from {}", self.source);
            return out;
        }
        let version = self
            .overlay
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into());
        let _ = writeln!(
            out,
            "remote configuration from ThingsBoard (config_version {version}) sets:"
        );
        for key in self.overlay.sources() {
            let _ = writeln!(out, "  {key}");
        }
        let _ = writeln!(out, "everything else comes from {}", self.source);
        let _ = writeln!(out, "merged sections set remotely:");
        for (key, value) in &self.overlay.sections {
            let _ = writeln!(out, "  {key} = {}", secret::redact(value));
        }
        out
    }
}

/// Loads the config (see [`load`]) and merges the remote overlay stored in
/// its state directory, to look at it (`check-config`, SIGHUP): nothing
/// is written. A stored overlay that no longer fits the file (the file
/// changed since) is set aside with the reason, and the file's config runs.
pub fn load_full(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_stored(explicit, false)
}

/// [`load_full`] for a start: a remote change being tried is used once
/// (and marked so), or set aside if an earlier start did not confirm it
/// (see [`stored`]).
pub fn load_for_start(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    load_stored(explicit, true)
}

fn load_stored(explicit: Option<&Path>, starting: bool) -> Result<Loaded, ConfigError> {
    let (base_config, source) = load(explicit)?;
    let text = match &source {
        Source::File(path) => std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            source: e,
        })?,
        Source::BuiltIn => DEFAULT_CONFIG.to_string(),
    };
    let mut base = parse_toml(&text, &source.to_string())?;
    if matches!(source, Source::BuiltIn) {
        base.insert(
            "state_dir".into(),
            toml::Value::String(LOCAL_STATE_DIR.to_string()),
        );
    }
    let state_dir = base_config.state_dir.clone();
    let mut loaded = Loaded {
        config: base_config.clone(),
        file: base_config,
        source,
        base,
        overlay: overlay::Overlay::default(),
        overlay_error: None,
        trying: false,
        last_good: overlay::Overlay::default(),
        rolled_back: None,
    };
    match overlay::Overlay::load(&state_dir) {
        Ok(o) if o.is_empty() => {}
        Ok(o) => match loaded.with_overlay(&o) {
            Ok(c) => {
                loaded.config = c;
                loaded.overlay = o.clone();
                loaded.last_good = o;
            }
            Err(e) => loaded.overlay_error = Some(e),
        },
        Err(e) => loaded.overlay_error = Some(e),
    }
    if starting {
        loaded.take_trying();
    }
    loaded.rolled_back = stored::load_failed(&state_dir);
    Ok(loaded)
}

impl Loaded {
    /// The file's config with `o` merged in, checked like the file and
    /// against what a remote change may not do ([`guard`]).
    pub fn with_overlay(&self, o: &overlay::Overlay) -> Result<Config, String> {
        let table = o.merge(&self.base)?;
        let c = parse_table(&table, "remote overlay").map_err(|e| e.to_string())?;
        guard::remote_change(&self.file, &self.file, &c, &o.sources())?;
        Ok(c)
    }

    /// Uses a remote change being tried, once; sets aside one that an
    /// earlier start did not confirm, or that does not fit.
    fn take_trying(&mut self) {
        let dir = self.file.state_dir.clone();
        let aside = |o: &overlay::Overlay, e: &str| {
            if let Err(w) = stored::set_aside(&dir, o, e) {
                eprintln!("outpost: {w}");
            }
        };
        match stored::load_trying(&dir) {
            None => {}
            Some(Err(e)) => aside(&overlay::Overlay::default(), &e),
            Some(Ok(t)) if t.started => aside(
                &t.overlay,
                "outpost stopped before this change was confirmed (it did not start, or crashed or lost power with it); the last good configuration runs",
            ),
            Some(Ok(t)) => match self.with_overlay(&t.overlay) {
                Ok(c) => match stored::save_trying(&dir, &t.overlay, true) {
                    Ok(()) => {
                        self.config = c;
                        self.overlay = t.overlay;
                        self.trying = true;
                    }
                    Err(e) => aside(&t.overlay, &e),
                },
                Err(e) => aside(&t.overlay, &e),
            },
        }
    }

    /// The file's config alone, after the stored overlay stopped a start:
    /// `error` says why, and is reported.
    pub fn file_only(&self, error: String) -> Loaded {
        Loaded {
            config: self.file.clone(),
            overlay: overlay::Overlay::default(),
            overlay_error: Some(error.clone()),
            trying: false,
            last_good: overlay::Overlay::default(),
            rolled_back: Some(stored::Failed {
                overlay: self.overlay.clone(),
                error,
            }),
            ..self.clone()
        }
    }
}

/// Loads the config named on the command line, else the system one, else the
/// built-in default (whose state then lives under `./outpost-state`).
pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
    let source = match explicit {
        Some(p) => Source::File(p.to_path_buf()),
        None if Path::new(SYSTEM_CONFIG_PATH).exists() => {
            Source::File(PathBuf::from(SYSTEM_CONFIG_PATH))
        }
        None => Source::BuiltIn,
    };
    let config = match &source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?;
            parse(&text, &source.to_string())?
        }
        Source::BuiltIn => {
            let mut c = parse(DEFAULT_CONFIG, &source.to_string())?;
            c.state_dir = PathBuf::from(LOCAL_STATE_DIR);
            c
        }
    };
    Ok((config, source))
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "state_dir",
    "log_level",
    "broker",
    "store",
    "route",
    "readings",
    "sink",
    "serial",
    "health",
    "remote",
    "http",
];

/// Parses and checks a config text, collecting every problem.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_table(&parse_toml(text, origin)?, origin)
}

/// The `state_dir` a config file names, read leniently (the rest of the
/// file may be broken): for finding a running daemon.
pub fn state_dir_of(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let named = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table
            .get("state_dir")
            .and_then(toml::Value::as_str)
            .map(str::to_string),
        // Not TOML at all any more: the line, if it is still there.
        Err(_) => text.lines().find_map(|l| {
            let v = l
                .trim()
                .strip_prefix("state_dir")?
                .trim()
                .strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        }),
    };
    Some(PathBuf::from(
        named.unwrap_or_else(|| "/var/lib/outpost".into()),
    ))
}

/// The TOML text as a table (the base a remote overlay is merged onto).
pub fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("not valid TOML: {}", e.to_string().trim_end()),
        }],
    })
}

/// Checks a config table, collecting every problem.
pub fn parse_table(table: &toml::Table, origin: &str) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();

    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            problems.add(
                key.clone(),
                format!(
                    "unknown key (expected one of: {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            );
        }
    }

    let state_dir = section::<PathBuf>(table, "state_dir", &mut problems)
        .unwrap_or_else(|| PathBuf::from("/var/lib/outpost"));
    let log_level =
        section::<String>(table, "log_level", &mut problems).unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        problems.add(
            "log_level",
            format!("`{log_level}` is not a log filter (try `info` or `outpost=debug,warn`)"),
        );
    }
    let broker = section::<BrokerConfig>(table, "broker", &mut problems).unwrap_or_default();
    let store = section::<StoreConfig>(table, "store", &mut problems).unwrap_or_default();
    let health = section::<HealthConfig>(table, "health", &mut problems).unwrap_or_default();
    let remote = section::<RemoteConfig>(table, "remote", &mut problems).unwrap_or_default();
    let http = section::<HttpConfig>(table, "http", &mut problems).unwrap_or_default();
    http::check(&http, &mut problems);
    let routes = array::<RouteConfig>(table, "route", "[[route]]", &mut problems);
    let readings = section::<ReadingsConfig>(table, "readings", &mut problems).unwrap_or_default();
    route::check_readings(&readings, &mut problems);

    let mut sinks = BTreeMap::new();
    match table.get("sink") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (name, item) in t {
                let path = format!("sink.{name}");
                if !valid_name(name) {
                    problems.add(
                        path.clone(),
                        "a sink name may use only letters, digits, `-` and `_`",
                    );
                }
                if let Some(s) = sink::parse(item, &path, &mut problems) {
                    sinks.insert(name.clone(), s);
                }
            }
        }
        Some(_) => problems.add("sink", "must be a table of sinks, written as [sink.NAME]"),
    }

    let serial = array::<SerialConfig>(table, "serial", "[[serial]]", &mut problems);
    serial::check(&serial, &mut problems);

    broker::check(&broker, &mut problems);
    http::check_ingest_exposure(&http, &broker, &mut problems);
    store::check(&store, &mut problems);
    ops::check(&health, &remote, &mut problems);
    for (i, r) in &routes {
        route::check(*i, r, &sinks, &mut problems);
    }
    for (name, s) in &sinks {
        sink::check(name, s, &mut problems);
    }
    sink::check_client_ids(&sinks, &mut problems);

    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        });
    }
    Ok(Config {
        state_dir,
        log_level,
        broker,
        store,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        readings,
        sinks,
        serial: serial.into_iter().map(|(_, s)| s).collect(),
        health,
        remote,
        http,
    })
}

/// Names of sinks and serial ports: letters, digits, `-` and `_`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_examples_are_valid() {
        let tb = parse(
            include_str!("../../config/thingsboard.toml"),
            "thingsboard.toml",
        )
        .expect("config/thingsboard.toml must be valid");
        assert!(tb
            .sinks
            .values()
            .any(|s| matches!(s, SinkConfig::Thingsboard(_))));
        let serial = parse(include_str!("../../config/serial.toml"), "serial.toml")
            .expect("config/serial.toml must be valid");
        assert_eq!(serial.serial.len(), 4);
        assert_eq!(serial.serial[2].slave.len(), 2);
        let platforms = parse(
            include_str!("../../config/platforms.toml"),
            "platforms.toml",
        )
        .expect("config/platforms.toml must be valid");
        assert_eq!(platforms.sinks.len(), 3);
    }

    #[test]
    fn built_in_default_is_valid() {
        let c = parse(DEFAULT_CONFIG, "default").expect("default config must be valid");
        assert!(!c.routes.is_empty());
        assert!(!c.sinks.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            colour = "blue"
            [broker]
            max_conections = 5
            [store]
            max_bytes = "lots"
            full_policy = "panic"
            [[route]]
            topic = "a/#/b"
            sink = "nowhere"
            [sink.up]
            type = "mqtt"
            url = "http://example"
            inflight = "many"
        "#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "colour",
            "broker.max_conections",
            "store.max_bytes",
            "store.full_policy",
            "route[0].topic",
            "route[0].sink",
            "sink.up.inflight",
        ] {
            assert!(paths.contains(&want), "missing {want} in {problems:?}");
        }
    }

    #[test]
    fn firmware_keys_are_checked() {
        let text = r#"
            [sink.tb]
            type = "thingsboard"
            url = "mqtt://localhost"
            access_token = "t"
            max_payload_size = "8 KiB"
            [sink.tb.firmware]
            chunk_size = 0
            notice_topic = "outpost/#"
            chunk_sise = 1
        "#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"sink.tb.firmware.chunk_sise"),
            "{problems:?}"
        );
        let ok = text.replace("chunk_sise = 1\n", "");
        let Err(ConfigError::Invalid { problems, .. }) = parse(&ok, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"sink.tb.firmware.chunk_size"),
            "{problems:?}"
        );
        assert!(
            paths.contains(&"sink.tb.firmware.notice_topic"),
            "{problems:?}"
        );
    }

    #[test]
    fn sink_url_and_template_are_checked() {
        let text = r#"
            [sink.up]
            type = "mqtt"
            url = "http://example"
            topic = "site/{devcie}/t"
        "#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text, "t") else {
            panic!("expected problems")
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"sink.up.url"), "{problems:?}");
        assert!(paths.contains(&"sink.up.topic"), "{problems:?}");
    }
}
