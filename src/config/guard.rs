//! What a remote change may not do, whatever it says.
//!
//! The cloud may change how outpost works; it may not change where outpost
//! keeps its files, nor weaken how it talks to the cloud, because either can
//! leave a box that no longer starts or no longer trusts its uplink, and
//! nobody on site to fix it:
//!
//! - **file paths** (`store.path`, a sink's `ca_file`, `cert_file`,
//!   `key_file`) are refused unless the file config says
//!   `remote.allow_paths = true`, and even then must stay inside the state
//!   directory (the one place the service may write, and the place a remote
//!   operator can have put a file through outpost itself);
//! - a sink that speaks **TLS** (`mqtts://`) cannot be moved to plain
//!   `mqtt://`.
//!
//! Sizes and durations need no rule here: they are bounded by the same
//! checks as the file (`check-config` enforces them too).

use std::path::{Component, Path};

use super::Config;
use crate::net::BrokerUrl;

/// Keys of a sink that name a file.
const SINK_FILE_KEYS: &[&str] = &["ca_file", "cert_file", "key_file"];

/// Checks a remote change: `file` is the local file's config (whose
/// `[remote]` and `state_dir` rule), `running` the config now in force,
/// `next` the change merged in, and `set` the key paths the overlay sets.
/// Every refusal is named by key path.
pub fn remote_change(
    file: &Config,
    running: &Config,
    next: &Config,
    set: &[String],
) -> Result<(), String> {
    let mut problems = Vec::new();
    for key in set {
        let Some(path) = file_value(next, key) else {
            continue;
        };
        if !file.remote.allow_paths {
            problems.push(format!(
                "{key}: a file path cannot be set remotely (the file config may allow paths inside the state directory with remote.allow_paths = true)"
            ));
        } else if !inside(&file.state_dir, path) {
            problems.push(format!(
                "{key}: `{}` is outside the state directory {}",
                path.display(),
                file.state_dir.display()
            ));
        }
    }
    for (name, sink) in &next.sinks {
        let Some(now) = running.sinks.get(name) else {
            continue;
        };
        if is_tls(now.connection().url) && !is_tls(sink.connection().url) {
            problems.push(format!(
                "sink.{name}.url: the cloud cannot move a sink from mqtts:// to mqtt:// (change it in the file)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The path a key names in `config`, if the key is one that names a file.
fn file_value<'a>(config: &'a Config, key: &str) -> Option<&'a Path> {
    if key == "store.path" {
        return Some(&config.store.path);
    }
    let rest = key.strip_prefix("sink.")?;
    let (name, field) = rest.split_once('.')?;
    if !SINK_FILE_KEYS.contains(&field) {
        return None;
    }
    let sink = config.sinks.get(name)?;
    match field {
        "ca_file" => sink.connection().ca_file,
        "cert_file" => sink.client_cert().0.map(|p| p.as_path()),
        _ => sink.client_cert().1.map(|p| p.as_path()),
    }
}

/// Is `path` (relative ones are taken against `state_dir`) inside
/// `state_dir`, without `..`?
fn inside(state_dir: &Path, path: &Path) -> bool {
    if path.components().any(|c| c == Component::ParentDir) {
        return false;
    }
    !path.is_absolute() || path.starts_with(state_dir)
}

fn is_tls(url: &str) -> bool {
    BrokerUrl::parse(url).is_ok_and(|u| u.tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::parse(
            &format!(
                r#"state_dir = "/var/lib/outpost"
[sink.up]
type = "mqtt"
url = "mqtts://cloud.example:8883"
{extra}"#
            ),
            "test",
        )
        .expect("valid")
    }

    #[test]
    fn paths_need_the_file_to_allow_them_and_stay_inside_the_state_dir() {
        let file = config("");
        let next = {
            let mut c = file.clone();
            c.store.path = "/etc/outpost.db".into();
            c
        };
        let set = ["store.path".to_string()];
        let err = remote_change(&file, &file, &next, &set).expect_err("refused");
        assert!(
            err.contains("store.path: a file path cannot be set remotely"),
            "{err}"
        );

        let allowing = config("[remote]\nallow_paths = true");
        let err = remote_change(&allowing, &allowing, &next, &set).expect_err("outside");
        assert!(err.contains("outside the state directory"), "{err}");
        let mut inner = next.clone();
        inner.store.path = "/var/lib/outpost/other.db".into();
        assert_eq!(remote_change(&allowing, &allowing, &inner, &set), Ok(()));
        inner.store.path = "sub/../../x.db".into();
        assert!(remote_change(&allowing, &allowing, &inner, &set).is_err());
        inner.store.path = "relative.db".into();
        assert_eq!(remote_change(&allowing, &allowing, &inner, &set), Ok(()));
        // A key that is not a path is none of this rule's business.
        assert_eq!(
            remote_change(&file, &file, &file, &["store.max_bytes".into()]),
            Ok(())
        );
    }

    #[test]
    fn a_tls_sink_cannot_be_moved_to_plain_mqtt() {
        let file = config("");
        let plain = crate::config::parse(
            r#"state_dir = "/var/lib/outpost"
[sink.up]
type = "mqtt"
url = "mqtt://cloud.example:1883""#,
            "test",
        )
        .expect("valid");
        let err = remote_change(&file, &file, &plain, &["sink.up.url".into()]).expect_err("no");
        assert!(err.contains("sink.up.url"), "{err}");
        // The other way is fine.
        assert_eq!(
            remote_change(&plain, &plain, &file, &["sink.up.url".into()]),
            Ok(())
        );
    }
}
