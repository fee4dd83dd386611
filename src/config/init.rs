//! `outpost init`: a working config for one platform from a few answers.
//! The text is checked with the same code as `check-config` before it
//! replaces anything; an existing file is kept beside it as `.bak`.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The platforms `init` can write a config for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Thingsboard,
    Thingspeak,
    Ttn,
    Mqtt,
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Platform, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "thingsboard" | "tb" => Ok(Platform::Thingsboard),
            "thingspeak" => Ok(Platform::Thingspeak),
            "ttn" | "thethingsstack" => Ok(Platform::Ttn),
            "mqtt" => Ok(Platform::Mqtt),
            other => Err(format!(
                "unknown platform `{other}` (thingsboard, thingspeak, ttn or mqtt)"
            )),
        }
    }
}

/// What the user answered; `None` is asked for (or is an error when
/// nobody can be asked).
#[derive(Debug, Clone, Default)]
pub struct Answers {
    pub platform: Option<Platform>,
    /// `mqtt(s)://host[:port]` of the platform (ThingsBoard, MQTT), or its
    /// host alone for ThingsBoard (then `mqtts://HOST:8883`).
    pub url: Option<String>,
    /// ThingsBoard: the device's (or gateway's) access token.
    pub token: Option<String>,
    /// ThingsBoard self-provisioning instead of a token.
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    /// ThingSpeak: the channel and the MQTT device's credentials;
    /// MQTT: optional login.
    pub channel_id: Option<u64>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TTN: cluster (`eu1`, `nam1`, `au1`), application and API key.
    pub region: Option<String>,
    pub application_id: Option<String>,
    pub api_key: Option<String>,
    pub state_dir: Option<String>,
    /// The local broker's address (default `127.0.0.1:1883`).
    pub listen: Option<String>,
}

/// Asks one question: the prompt and whether the answer is a secret.
pub type Ask<'a> = dyn FnMut(&str, bool) -> Result<String, String> + 'a;

impl Answers {
    /// Fills what is missing by asking; an empty answer to an optional
    /// question leaves it unset.
    pub fn complete(mut self, ask: &mut Ask<'_>) -> Result<Answers, String> {
        let platform = match self.platform {
            Some(p) => p,
            None => ask(
                "platform (--platform: thingsboard, thingspeak, ttn, mqtt): ",
                false,
            )?
            .parse()?,
        };
        self.platform = Some(platform);
        let need = |v: &mut Option<String>, q: &str, secret: bool, ask: &mut Ask<'_>| {
            if v.as_deref().map_or(true, str::is_empty) {
                let a = ask(q, secret)?;
                if a.trim().is_empty() {
                    return Err(format!("{} is needed", q.trim_end_matches([':', ' '])));
                }
                *v = Some(a.trim().to_string());
            }
            Ok::<(), String>(())
        };
        match platform {
            Platform::Thingsboard => {
                need(
                    &mut self.url,
                    "ThingsBoard host or mqtt(s)://host:port (--url): ",
                    false,
                    ask,
                )?;
                if self.token.is_none() && self.provision_key.is_none() {
                    let t = ask(
                        "access token (--token; empty: provision with a key and secret): ",
                        true,
                    )?;
                    if !t.trim().is_empty() {
                        self.token = Some(t.trim().to_string());
                    }
                }
                if self.token.is_none() {
                    need(
                        &mut self.provision_key,
                        "provision device key (--provision-key): ",
                        false,
                        ask,
                    )?;
                    need(
                        &mut self.provision_secret,
                        "provision device secret (--provision-secret): ",
                        true,
                        ask,
                    )?;
                }
            }
            Platform::Thingspeak => {
                if self.channel_id.is_none() {
                    let c = ask("ThingSpeak channel id (--channel-id): ", false)?;
                    self.channel_id = Some(
                        c.trim()
                            .parse()
                            .map_err(|_| format!("channel id `{}` is not a number", c.trim()))?,
                    );
                }
                need(
                    &mut self.client_id,
                    "MQTT device client id (--client-id): ",
                    false,
                    ask,
                )?;
                need(
                    &mut self.username,
                    "MQTT device username (--username): ",
                    false,
                    ask,
                )?;
                need(
                    &mut self.password,
                    "MQTT device password (--password): ",
                    true,
                    ask,
                )?;
            }
            Platform::Ttn => {
                if self.url.is_none() {
                    need(
                        &mut self.region,
                        "cluster (--region: eu1, nam1, au1): ",
                        false,
                        ask,
                    )?;
                }
                need(
                    &mut self.application_id,
                    "application id (--application-id): ",
                    false,
                    ask,
                )?;
                need(
                    &mut self.api_key,
                    "API key (--api-key, NNSXS...): ",
                    true,
                    ask,
                )?;
            }
            Platform::Mqtt => {
                need(
                    &mut self.url,
                    "broker URL (--url, mqtt(s)://host:port): ",
                    false,
                    ask,
                )?;
            }
        }
        Ok(self)
    }

    /// The config file's text.
    pub fn render(&self) -> Result<String, String> {
        let platform = self.platform.ok_or("no platform chosen")?;
        let state_dir = self.state_dir.as_deref().unwrap_or("/var/lib/outpost");
        let mut t = format!(
            "# Written by `outpost init`; every key is in the README's configuration reference.\n\
             state_dir = {}\n\n\
             [broker]\n\
             # LAN sensors connect here. Another address needs logins (password_file)\n\
             # or allow_anonymous = true; see the README's \"Logins and ACLs\".\n\
             listen = {}\n\n\
             [[route]]\n\
             topic = \"sensors/+/telemetry\"\n\
             sink = \"cloud\"\n\n",
            quote(state_dir),
            quote(self.listen.as_deref().unwrap_or("127.0.0.1:1883"))
        );
        let line = |t: &mut String, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                t.push_str(&format!("{k} = {}\n", quote(v)));
            }
        };
        match platform {
            Platform::Thingsboard => {
                t.push_str(
                    "[[route]]\ntopic = \"sensors/+/attributes\"\nsink = \"cloud\"\nkind = \"attributes\"\n\n",
                );
                t.push_str("[sink.cloud]\ntype = \"thingsboard\"\n");
                let url = self.url.as_deref().map(tb_url).unwrap_or_default();
                t.push_str(&format!("url = {}\n", quote(&url)));
                t.push_str("mode = \"gateway\"\n");
                line(&mut t, "access_token", &self.token);
                if self.token.is_none() {
                    line(&mut t, "provision_device_key", &self.provision_key);
                    line(&mut t, "provision_device_secret", &self.provision_secret);
                }
            }
            Platform::Thingspeak => {
                t.push_str("[sink.cloud]\ntype = \"thingspeak\"\n");
                line(&mut t, "client_id", &self.client_id);
                line(&mut t, "username", &self.username);
                line(&mut t, "password", &self.password);
                if let Some(c) = self.channel_id {
                    t.push_str(&format!("channel_id = {c}\n"));
                }
                t.push_str("# Which reading key goes to which channel field.\n");
                t.push_str("fields = { temperature = \"field1\", humidity = \"field2\" }\n");
            }
            Platform::Ttn => {
                t.push_str("[sink.cloud]\ntype = \"ttn\"\n");
                let url = self.url.clone().unwrap_or_else(|| {
                    format!(
                        "mqtts://{}.cloud.thethings.network:8883",
                        self.region.as_deref().unwrap_or("eu1")
                    )
                });
                t.push_str(&format!("url = {}\n", quote(&url)));
                line(&mut t, "application_id", &self.application_id);
                line(&mut t, "api_key", &self.api_key);
            }
            Platform::Mqtt => {
                t.push_str("[sink.cloud]\ntype = \"mqtt\"\n");
                line(&mut t, "url", &self.url);
                line(&mut t, "username", &self.username);
                line(&mut t, "password", &self.password);
                t.push_str("topic = \"outpost/{device}/{kind}\"\n");
            }
        }
        Ok(t)
    }
}

/// `host` → `mqtts://host:8883`; a URL stays as it is.
fn tb_url(host: &str) -> String {
    if host.contains("://") {
        host.to_string()
    } else {
        format!("mqtts://{host}:8883")
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Why a config could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("the config `outpost init` made does not pass the checks (nothing was written):\n{0}")]
    Invalid(ConfigError),
    #[error("cannot write {path}: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// Checks `text` as `check-config` would and writes it to `path`; an
/// existing file is kept as `PATH.bak`, and the new one gets its owner and
/// mode (else 0640, as it holds credentials). Returns the backup's path.
pub fn write(path: &Path, text: &str) -> Result<Option<PathBuf>, InitError> {
    super::parse(text, &path.display().to_string()).map_err(InitError::Invalid)?;
    let err = |p: &Path, e: std::io::Error| InitError::Write {
        path: p.to_path_buf(),
        detail: e.to_string(),
    };
    let new = path.with_extension("toml.new");
    write_private(&new, text).map_err(|e| err(&new, e))?;
    let backup = match std::fs::metadata(path) {
        Ok(old) => {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let bak = path.with_extension("toml.bak");
            std::fs::copy(path, &bak).map_err(|e| err(&bak, e))?;
            // Same owner and mode as the file it replaces (root:outpost
            // 0640 for the package's): the service can still read it.
            let _ = std::os::unix::fs::chown(&new, Some(old.uid()), Some(old.gid()));
            std::fs::set_permissions(&new, std::fs::Permissions::from_mode(old.mode() & 0o777))
                .map_err(|e| err(&new, e))?;
            Some(bak)
        }
        Err(_) => None,
    };
    std::fs::rename(&new, path).map_err(|e| err(path, e))?;
    Ok(backup)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers given one by one, as a person at the prompt would.
    fn scripted(answers: &[&str]) -> impl FnMut(&str, bool) -> Result<String, String> {
        let mut left: Vec<String> = answers.iter().rev().map(|s| s.to_string()).collect();
        move |q, _| left.pop().ok_or_else(|| format!("unexpected question {q}"))
    }

    #[test]
    fn every_platform_gives_a_config_that_passes_the_checks() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["thingsboard", "tb.example.org", "TOKEN123"],
                "access_token = \"TOKEN123\"",
            ),
            (
                &["tb", "mqtt://tb.local:1883", "", "KEY", "SECRET"],
                "provision_device_secret = \"SECRET\"",
            ),
            (
                &["thingspeak", "1234567", "cid", "user", "pw"],
                "channel_id = 1234567",
            ),
            (
                &["ttn", "eu1", "greenhouse", "NNSXS.ABC"],
                "eu1.cloud.thethings.network",
            ),
            (
                &["mqtt", "mqtt://broker.local:1883"],
                "url = \"mqtt://broker.local:1883\"",
            ),
        ];
        for (answers, want) in cases {
            let a = Answers::default()
                .complete(&mut scripted(answers))
                .expect("answers");
            let text = a.render().expect("render");
            assert!(text.contains(want), "{answers:?}: {text}");
            crate::config::parse(&text, "init")
                .unwrap_or_else(|e| panic!("{answers:?}: {e}\n{text}"));
        }
    }

    #[test]
    fn a_missing_answer_and_a_bad_number_are_named() {
        let e = Answers::default()
            .complete(&mut scripted(&["mqtt", ""]))
            .expect_err("no url");
        assert!(e.contains("broker URL"), "{e}");
        let e = Answers::default()
            .complete(&mut scripted(&["thingspeak", "twelve"]))
            .expect_err("bad id");
        assert!(e.contains("`twelve` is not a number"), "{e}");
    }

    #[test]
    fn writing_keeps_the_old_file_and_refuses_a_config_that_fails_the_checks() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, "# the shipped one\n").expect("old");
        let a = Answers {
            platform: Some(Platform::Mqtt),
            url: Some("mqtt://127.0.0.1:1883".into()),
            state_dir: Some(dir.path().join("state").display().to_string()),
            ..Answers::default()
        };
        let bak = write(&path, &a.render().expect("text")).expect("write");
        assert_eq!(
            std::fs::read_to_string(bak.expect("a backup")).expect("bak"),
            "# the shipped one\n"
        );
        assert!(std::fs::read_to_string(&path)
            .expect("new")
            .contains("type = \"mqtt\""));
        let bad = Answers {
            url: Some("http://not-mqtt".into()),
            ..a
        };
        let before = std::fs::read_to_string(&path).expect("new");
        let e = write(&path, &bad.render().expect("text")).expect_err("refused");
        assert!(e.to_string().contains("does not pass the checks"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), before);
    }
}
