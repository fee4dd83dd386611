//! Why a connection failed, in words a person can act on, and how long to
//! wait before the next attempt.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError};

use super::tls::CLIENT_CERT_ALERTS;
use super::Uplink;
use crate::sink::Platform;

impl<E: Platform> Uplink<E> {
    /// Logs why a connection failed, in words, and picks the wait.
    pub(super) fn explain(&mut self, e: ConnectionError) -> Duration {
        let sink = self.name.as_str();
        let broker = format!("{}:{}", self.url.host, self.url.port);
        match &e {
            ConnectionError::ConnectionRefused(code) => {
                let why = match code {
                    ConnectReturnCode::BadUserNamePassword => {
                        "bad username or password (check username/password or the access token)"
                    }
                    ConnectReturnCode::NotAuthorized => {
                        "not authorised (check the credentials and the broker's ACL)"
                    }
                    ConnectReturnCode::BadClientId => "client id rejected (check client_id)",
                    ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not accepted",
                    ConnectReturnCode::ServiceUnavailable => "service unavailable",
                    ConnectReturnCode::Success => "refused with code 0",
                };
                let delay = if matches!(
                    code,
                    ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success
                ) {
                    self.backoff.next_delay()
                } else {
                    self.backoff.give_up_delay()
                };
                let hint = self.encoder.refused_hint(*code).unwrap_or("");
                tracing::error!(sink, %broker, code = ?code, retry_in_ms = delay.as_millis() as u64,
                    "upstream refused the connection: {why}{hint}; records stay queued");
                delay
            }
            other => {
                let delay = self.backoff.next_delay();
                let text = other.to_string();
                // rustls reports the server's refusal of our certificate as
                // a TLS alert; say what it means.
                let refused_cert =
                    self.mtls.is_some() && CLIENT_CERT_ALERTS.iter().any(|a| text.contains(a));
                if refused_cert {
                    tracing::error!(sink, %broker, error = %text, retry_in_ms = delay.as_millis() as u64,
                        "upstream connection failed: the server did not accept our client certificate \
                         (is the chain issued by a CA the server trusts, and complete up to it?); records stay queued");
                } else {
                    tracing::warn!(sink, %broker, error = %text, retry_in_ms = delay.as_millis() as u64,
                        "upstream connection failed; records stay queued");
                }
                delay
            }
        }
    }
}
