//! ThingsBoard device provisioning: a gateway that ships with only its
//! device profile's provision key and secret asks ThingsBoard for its own
//! credentials on first start, keeps them in the state directory (0600),
//! and uses them from then on.
//!
//! The exchange (ThingsBoard's MQTT provisioning API): connect with the
//! username `provision`, subscribe to `/provision/response`, publish
//! `{"deviceName", "provisionDeviceKey", "provisionDeviceSecret",
//! "credentialsType", ...}` on `/provision/request`, and read the answer.
//! ThingsBoard's documentation uses both `status` and
//! `provisionDeviceStatus` for the outcome; both are accepted.
//!
//! Until it has credentials, the sink does not connect and its records stay
//! queued; a refusal is logged with ThingsBoard's message and asked again
//! after `reconnect_max`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{ProvisionCredentials, ThingsboardSinkConfig};
use crate::net::BrokerUrl;
use crate::pki;
use crate::sink::session::{tls_config, Settings};

/// Credentials obtained by provisioning, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    AccessToken(String),
    MqttBasic {
        client_id: String,
        username: String,
        password: String,
    },
    /// Paths of the stored certificate and key.
    X509 {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Credentials {
    /// The connection settings with these credentials.
    pub fn apply(&self, mut s: Settings) -> Settings {
        match self {
            Credentials::AccessToken(t) => {
                s.username = Some(t.clone());
                s.password = None;
            }
            Credentials::MqttBasic {
                client_id,
                username,
                password,
            } => {
                s.client_id = client_id.clone();
                s.username = Some(username.clone());
                s.password = Some(password.clone());
            }
            Credentials::X509 { cert, key } => {
                s.username = None;
                s.password = None;
                s.client_cert = Some((cert.clone(), key.clone()));
            }
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("ThingsBoard refused provisioning: {0}")]
    Refused(String),
    #[error("no answer to the provisioning request within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach ThingsBoard for provisioning: {0}")]
    Connection(String),
    #[error("unreadable provisioning answer: {0}")]
    Answer(String),
    #[error("cannot store the credentials in {}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Setup(String),
}

/// Where a sink's provisioned credentials live.
fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("credentials")
}

fn record_path(state_dir: &Path, sink: &str) -> PathBuf {
    store_dir(state_dir).join(format!("{sink}.json"))
}

/// The stored credentials of `sink`, if it was provisioned before.
pub fn stored(state_dir: &Path, sink: &str) -> Result<Option<Credentials>, ProvisionError> {
    let path = record_path(state_dir, sink);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ProvisionError::Store { path, source }),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        ProvisionError::Setup(format!(
            "{} is damaged ({e}); remove it to provision again",
            path.display()
        ))
    })?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let creds = match v.get("credentialsType").and_then(Value::as_str) {
        Some("ACCESS_TOKEN") => s("token").map(Credentials::AccessToken),
        Some("MQTT_BASIC") => match (s("clientId"), s("username"), s("password")) {
            (Some(client_id), Some(username), Some(password)) => Some(Credentials::MqttBasic {
                client_id,
                username,
                password,
            }),
            _ => None,
        },
        Some("X509_CERTIFICATE") => Some(Credentials::X509 {
            cert: store_dir(state_dir).join(format!("{sink}.pem")),
            key: store_dir(state_dir).join(format!("{sink}.key")),
        }),
        _ => None,
    };
    creds.map(Some).ok_or_else(|| {
        ProvisionError::Setup(format!(
            "{} is incomplete; remove it to provision again",
            path.display()
        ))
    })
}

/// Writes a file 0600 atomically (temp file, fsync, rename).
fn write_secret(path: &Path, contents: &str) -> Result<(), ProvisionError> {
    crate::files::write_private(path, contents.as_bytes()).map_err(|source| ProvisionError::Store {
        path: path.to_path_buf(),
        source,
    })
}

/// The stored credentials, or new ones from ThingsBoard. Retries (after
/// `reconnect_max`) until it has them; `None` only on shutdown.
pub async fn credentials(
    sink: &str,
    cfg: &ThingsboardSinkConfig,
    base: &Settings,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Option<Credentials> {
    let mut last_error = None;
    loop {
        let outcome = match stored(state_dir, sink) {
            Ok(Some(c)) => {
                tracing::info!(sink, "using the credentials stored by provisioning");
                return Some(c);
            }
            Ok(None) => {
                tokio::select! {
                    r = provision(sink, cfg, base, state_dir) => r,
                    _ = shutdown.cancelled() => return None,
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(c) => return Some(c),
            Err(e) => {
                let text = e.to_string();
                let wait = cfg.reconnect_max.0;
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(sink, error = %text, retry_in_s = wait.as_secs_f64(),
                        "provisioning failed; records stay queued");
                    last_error = Some(text);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// The host name, the default device name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "outpost".into())
}

fn random_secret() -> String {
    (0..24)
        .map(|_| {
            let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            fastrand::choice(alphabet.iter()).map_or('x', |b| char::from(*b))
        })
        .collect()
}

/// One provisioning exchange; stores and returns the credentials.
async fn provision(
    sink: &str,
    cfg: &ThingsboardSinkConfig,
    base: &Settings,
    state_dir: &Path,
) -> Result<Credentials, ProvisionError> {
    let device = cfg.provision_device_name.clone().unwrap_or_else(host_name);
    let mut request = json!({
        "deviceName": device,
        "provisionDeviceKey": cfg.provision_device_key.clone().unwrap_or_default(),
        "provisionDeviceSecret": cfg.provision_device_secret.clone().unwrap_or_default(),
    });
    // What we offer, kept to be stored if ThingsBoard agrees.
    let mut x509 = None;
    let mut basic = None;
    match cfg.provision_credentials {
        ProvisionCredentials::AccessToken => {
            set(&mut request, "credentialsType", json!("ACCESS_TOKEN"));
        }
        ProvisionCredentials::MqttBasic => {
            let (client_id, username, password) = (
                format!("{device}-{}", fastrand::u32(..)),
                device.clone(),
                random_secret(),
            );
            set(&mut request, "credentialsType", json!("MQTT_BASIC"));
            set(&mut request, "clientId", json!(client_id));
            set(&mut request, "username", json!(username));
            set(&mut request, "password", json!(password));
            basic = Some((client_id, username, password));
        }
        ProvisionCredentials::X509Certificate => {
            let key = pki::make::keygen(pki::make::KeyKind::EcP256)?;
            let cert = pki::make::self_signed(
                &key,
                &pki::make::Spec {
                    cn: device.clone(),
                    sans: vec![],
                    days: 3650,
                    not_after: None,
                    ca: None,
                },
            )?;
            set(&mut request, "credentialsType", json!("X509_CERTIFICATE"));
            set(&mut request, "hash", json!(cert));
            x509 = Some((cert, key));
        }
    }
    tracing::info!(sink, device = %device, credentials = ?cfg.provision_credentials,
        "asking ThingsBoard to provision this device");
    let answer = exchange(base, &request, cfg.provision_timeout.0).await?;

    let status = answer
        .get("status")
        .and_then(Value::as_str)
        .or_else(|| answer.get("provisionDeviceStatus").and_then(Value::as_str))
        .unwrap_or_default();
    if status != "SUCCESS" {
        let msg = answer
            .get("errorMsg")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("status {status:?}"));
        return Err(ProvisionError::Refused(msg));
    }

    let dir = store_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| ProvisionError::Store {
        path: dir.clone(),
        source,
    })?;
    let record_path = record_path(state_dir, sink);
    let value = answer.get("credentialsValue").unwrap_or(&Value::Null);
    let (record, creds) = match cfg.provision_credentials {
        ProvisionCredentials::AccessToken => {
            let token = value
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ProvisionError::Answer("no credentialsValue (the token)".into()))?
                .to_string();
            (
                json!({"credentialsType": "ACCESS_TOKEN", "token": token}),
                Credentials::AccessToken(token),
            )
        }
        ProvisionCredentials::MqttBasic => {
            let (mut client_id, mut username, mut password) = basic.unwrap_or_default();
            // ThingsBoard echoes them; take its word where it gives one.
            if let Some(v) = value["clientId"].as_str() {
                client_id = v.to_string();
            }
            if let Some(v) = value["userName"].as_str().or(value["username"].as_str()) {
                username = v.to_string();
            }
            if let Some(v) = value["password"].as_str() {
                password = v.to_string();
            }
            (
                json!({"credentialsType": "MQTT_BASIC", "clientId": client_id, "username": username, "password": password}),
                Credentials::MqttBasic {
                    client_id,
                    username,
                    password,
                },
            )
        }
        ProvisionCredentials::X509Certificate => {
            let (cert, key) = x509.unwrap_or_default();
            let (cert_path, key_path) = (
                dir.join(format!("{sink}.pem")),
                dir.join(format!("{sink}.key")),
            );
            write_secret(&key_path, &key)?;
            write_secret(&cert_path, &cert)?;
            (
                json!({"credentialsType": "X509_CERTIFICATE"}),
                Credentials::X509 {
                    cert: cert_path,
                    key: key_path,
                },
            )
        }
    };
    write_secret(&record_path, &record.to_string())?;
    tracing::info!(sink, device = %device, stored = %record_path.display(),
        "provisioned by ThingsBoard; credentials stored");
    Ok(creds)
}

/// Connects as `provision`, sends the request, returns the answer.
async fn exchange(
    base: &Settings,
    request: &Value,
    timeout: Duration,
) -> Result<Value, ProvisionError> {
    let url = BrokerUrl::parse(&base.url).map_err(ProvisionError::Setup)?;
    let mut opts = MqttOptions::new(
        format!("provision-{:08x}", fastrand::u32(..)),
        url.host.clone(),
        url.port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_credentials("provision", "");
    if url.tls {
        let tls = tls_config("provision", base.ca_file.as_deref(), None)
            .map_err(|e| ProvisionError::Setup(e.to_string()))?;
        opts.set_transport(Transport::tls_with_config(tls));
    }
    let (client, mut events) = AsyncClient::new(opts, 8);
    let payload = serde_json::to_vec(request).unwrap_or_default();
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("/provision/response", QoS::AtLeastOnce)
                        .await
                        .map_err(|e| ProvisionError::Connection(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(
                            "/provision/request",
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .await
                        .map_err(|e| ProvisionError::Connection(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == "/provision/response" => {
                    return serde_json::from_slice::<Value>(&p.payload)
                        .map_err(|e| ProvisionError::Answer(e.to_string()));
                }
                Ok(_) => {}
                Err(e) => return Err(ProvisionError::Connection(e.to_string())),
            }
        }
    };
    let answer = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ProvisionError::Timeout(timeout)));
    let _ = client.try_disconnect();
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    answer
}

/// `request[key] = value` for the request object built here.
fn set(request: &mut Value, key: &str, value: Value) {
    if let Some(m) = request.as_object_mut() {
        m.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_credentials_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(stored(dir.path(), "tb").expect("none yet"), None);
        std::fs::create_dir_all(store_dir(dir.path())).expect("mkdir");
        write_secret(
            &record_path(dir.path(), "tb"),
            r#"{"credentialsType":"MQTT_BASIC","clientId":"c","username":"u","password":"p"}"#,
        )
        .expect("write");
        assert_eq!(
            stored(dir.path(), "tb").expect("read"),
            Some(Credentials::MqttBasic {
                client_id: "c".into(),
                username: "u".into(),
                password: "p".into()
            })
        );
        let mode = std::fs::metadata(record_path(dir.path(), "tb"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat");
        assert_eq!(mode, 0o600);
        std::fs::write(record_path(dir.path(), "tb"), "{not json").expect("write");
        let err = stored(dir.path(), "tb").expect_err("damaged");
        assert!(
            err.to_string().contains("remove it to provision again"),
            "{err}"
        );
    }
}
