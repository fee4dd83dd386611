//! TLS for `mqtts://` sinks: the server is verified against `ca_file` (or
//! the system roots), and a client certificate chain, when configured, is
//! read again before every connection attempt, so a renewed certificate is
//! used without a restart and a broken one keeps only this sink waiting.

use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use rumqttc::{TlsConfiguration, Transport};

use super::{Settings, Uplink};
use crate::sink::{Platform, SinkError};

/// The client certificate of an mTLS sink, as last loaded.
pub(super) struct Mtls {
    pub(super) ca_file: Option<std::path::PathBuf>,
    pub(super) client_cert: (std::path::PathBuf, std::path::PathBuf),
    /// The last problem logged, so that it is logged once, not per attempt.
    pub(super) last_error: Option<String>,
}

/// TLS alerts a server sends when it does not accept a client certificate.
pub(super) const CLIENT_CERT_ALERTS: &[&str] = &[
    "fatal alert: UnknownCA",
    "fatal alert: BadCertificate",
    "fatal alert: CertificateUnknown",
    "fatal alert: CertificateExpired",
    "fatal alert: CertificateRevoked",
    "fatal alert: CertificateRequired",
    "fatal alert: AccessDenied",
    "fatal alert: DecryptError",
];

impl<E: Platform> Uplink<E> {
    /// Reads and checks the client certificate and key for the next
    /// connection. A problem is logged (once until it changes) and this
    /// sink waits `reconnect_max`; its records stay queued.
    pub(super) fn load_client_cert(&mut self) -> Result<(), Duration> {
        let Some(m) = &mut self.mtls else {
            return Ok(());
        };
        match tls_config(&self.name, m.ca_file.as_deref(), Some(&m.client_cert)) {
            Ok(tls) => {
                if m.last_error.take().is_some() {
                    tracing::info!(sink = %self.name, "the client certificate is usable again");
                }
                self.options.set_transport(Transport::tls_with_config(tls));
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                let delay = self.backoff.give_up_delay();
                if m.last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(sink = %self.name, error = %text, retry_in_ms = delay.as_millis() as u64,
                        "not connecting: the client certificate cannot be used; records stay queued (the files are read again before every attempt)");
                    m.last_error = Some(text);
                }
                Err(delay)
            }
        }
    }
}

/// TLS for `mqtts://`: server verification against `ca_file`, or the system
/// roots when none is given. ring is the only crypto provider compiled in.
pub fn tls_config(
    sink: &str,
    ca_file: Option<&std::path::Path>,
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<TlsConfiguration, SinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |detail: String| SinkError::CaFile {
                sink: sink.to_string(),
                path: path.to_path_buf(),
                detail,
            };
            let file = std::fs::File::open(path).map_err(|e| ca_err(e.to_string()))?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
                .collect::<Result<_, _>>()
                .map_err(|e| ca_err(format!("not a PEM file: {e}")))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate found in the file".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(SinkError::Tls {
                    sink: sink.to_string(),
                    detail:
                        "no system CA certificates found (install ca-certificates or set ca_file)"
                            .into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Tls {
            sink: sink.to_string(),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => config.with_no_client_auth(),
        Some((chain, key)) => {
            let checked =
                crate::pki::identity::check(chain, key).map_err(|source| SinkError::Identity {
                    sink: sink.to_string(),
                    source,
                })?;
            config
                .with_client_auth_cert(checked.chain, checked.key)
                .map_err(|e| SinkError::Tls {
                    sink: sink.to_string(),
                    detail: format!("unusable client certificate or key: {e}"),
                })?
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Checks a sink's client certificate chain and key (see [`crate::pki`])
/// and logs what it presents: the leaf's CN (the device name ThingsBoard
/// derives), its issuer, and the days until it expires (a warning within
/// 30 days). `None` when there is none, or it cannot be used (the sink
/// itself reports why).
pub fn client_identity(sink: &str, cfg: &Settings) -> Option<crate::pki::identity::Identity> {
    let (chain, key) = cfg.client_cert.as_ref()?;
    let id = match crate::pki::identity::check(chain, key) {
        Ok(c) => c.identity,
        // The sink logs this and keeps its records queued; the rest of
        // outpost runs on.
        Err(_) => return None,
    };
    if id.days_left < 30 {
        tracing::warn!(sink, cn = %id.cn, not_after = %id.not_after, days_left = id.days_left,
            "the client certificate expires soon; renew it");
    } else {
        tracing::info!(sink, cn = %id.cn, issuer = %id.issuer_cn, chain = id.chain_len,
            not_after = %id.not_after, days_left = id.days_left, "client certificate checked");
    }
    Some(id)
}
