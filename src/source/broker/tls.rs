//! The TLS listener: sensors on an untrusted LAN connect with MQTT over
//! TLS, optionally presenting a certificate from a local CA (mutual TLS).
//! After the handshake a connection is the same as a plain one.

use std::net::SocketAddr;
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls;
use rumqttc::tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{conn, Inner};
use crate::config::BrokerTlsConfig;
use crate::pki;

/// The server side of TLS, from `[broker.tls]`. Errors name the file and
/// the problem.
pub fn acceptor(cfg: &BrokerTlsConfig) -> Result<TlsAcceptor, String> {
    let checked = pki::identity::check(&cfg.cert_file, &cfg.key_file)
        .map_err(|e| format!("broker.tls: {e}"))?;
    if checked.identity.days_left < 30 {
        tracing::warn!(cn = %checked.identity.cn, not_after = %checked.identity.not_after,
            "the local TLS listener's certificate expires soon; renew it");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("broker.tls: {e}"))?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pki::read_certs(path).map_err(|e| format!("broker.tls.client_ca_file: {e}"))? {
                roots
                    .add(c)
                    .map_err(|e| format!("broker.tls.client_ca_file: {}: {e}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("broker.tls.client_ca_file: {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(checked.chain, checked.key)
        .map_err(|e| format!("broker.tls: {}: {e}", cfg.cert_file.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The handshake, then the MQTT connection over it.
pub(super) async fn run(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    use_identity: bool,
    inner: Arc<Inner>,
    stop: CancellationToken,
    waiting: super::pending::Ticket,
) {
    let timeout = inner.settings.connect_timeout;
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A port probe, or a client that gave up: nothing to report.
            tracing::debug!(%peer, "TLS connection closed before the handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS sensor refused: handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS sensor refused: no handshake within the connect timeout");
            return;
        }
    };
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| pki::inspect::cn_of_der(der.as_ref()));
    if let Some(cn) = &cn {
        tracing::debug!(%peer, client_cn = %cn, "TLS sensor presented a certificate");
    }
    let identity = match (use_identity, cn) {
        (false, _) => None,
        (true, Some(cn)) => Some(cn),
        (true, None) => {
            tracing::warn!(%peer, "TLS sensor refused: its certificate has no CN to use as the username");
            return;
        }
    };
    conn::run(tls, peer, identity, inner, stop, waiting).await;
}
