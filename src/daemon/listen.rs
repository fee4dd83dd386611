//! The local broker's listeners. Each is bound at start; one whose address
//! is taken (another broker on 1883 is common on a Pi) or whose TLS
//! certificate cannot be used is tried again with backoff while the rest
//! of outpost runs: the outbox drains, the other listeners and the status
//! page serve. What is wrong is said in the journal, in `outpost status`
//! and in systemd's STATUS line until it works.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, BrokerTlsConfig};
use crate::sink::session::Backoff;
use crate::source::broker::{self, Broker, Listener};

/// One listener as the config asks for it.
#[derive(Clone)]
pub(super) struct Spec {
    pub addr: SocketAddr,
    /// Its key path in the config (`broker.listen`).
    pub key: &'static str,
    pub name: &'static str,
    pub what: &'static str,
    pub tls: Option<BrokerTlsConfig>,
}

/// The listeners `b` asks for.
pub(super) fn specs(b: &BrokerConfig) -> Vec<Spec> {
    let mut out = vec![Spec {
        addr: b.listen,
        key: "broker.listen",
        name: "mqtt",
        what: "MQTT 3.1.1 and 5",
        tls: None,
    }];
    if let Some(a) = b.listen_v5 {
        out.push(Spec {
            addr: a,
            key: "broker.listen_v5",
            name: "mqtt-2",
            what: "MQTT 3.1.1 and 5",
            tls: None,
        });
    }
    if let Some(t) = &b.tls {
        out.push(Spec {
            addr: t.listen,
            key: "broker.tls.listen",
            name: "mqtt-tls",
            what: "MQTT over TLS",
            tls: Some(t.clone()),
        });
    }
    out
}

/// Binds `spec` (and builds its TLS acceptor), or says why not.
pub(super) async fn bind(spec: &Spec) -> Result<Listener, String> {
    let acceptor = match &spec.tls {
        Some(t) => Some(broker::tls::acceptor(t)?),
        None => None,
    };
    let socket = tokio::net::TcpListener::bind(spec.addr)
        .await
        .map_err(|e| why_not(spec, &e))?;
    Ok(Listener {
        name: spec.name,
        socket: Arc::new(socket),
        tls: acceptor,
        use_identity: spec
            .tls
            .as_ref()
            .is_some_and(|t| t.use_identity_as_username),
    })
}

/// A bind error, with who else listens there when that is the cause.
fn why_not(spec: &Spec, e: &std::io::Error) -> String {
    let mut text = format!(
        "cannot listen on {} for {} ({}): {e}",
        spec.addr, spec.what, spec.key
    );
    if e.kind() == std::io::ErrorKind::AddrInUse {
        let others = crate::net::listeners_on(spec.addr.port());
        if !others.is_empty() {
            let list: Vec<String> = others.iter().map(ToString::to_string).collect();
            text.push_str(&format!(
                "; another program listens on {} (Debian's mosquitto service does on 1883: \
                 `systemctl disable --now mosquitto`, or change {})",
                list.join(", "),
                spec.key
            ));
        }
    }
    text
}

/// Tries `spec` again and again (1 s doubling to 30 s) until it listens,
/// then serves it until `shutdown`.
pub(super) fn keep_trying(
    broker: Broker,
    spec: Spec,
    first_error: String,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    crate::control::status::set_listener_problem(spec.key, Some(first_error));
    tasks.spawn(async move {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => return,
            }
            match bind(&spec).await {
                Ok(listener) => {
                    tracing::info!(listen = %spec.addr, key = spec.key, "now listening on {} for {}", spec.addr, spec.what);
                    crate::control::status::set_listener_problem(spec.key, None);
                    broker.serve_listener(listener, shutdown).await;
                    return;
                }
                Err(e) => {
                    crate::control::status::set_listener_problem(spec.key, Some(e));
                }
            }
        }
    });
}
