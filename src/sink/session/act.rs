//! Carrying out what a platform asks for: a publish, new limits, a reading
//! for the local side, an RPC to outpost itself, a configuration change.

use rumqttc::AsyncClient;

use super::flight::Flight;
use super::{End, Uplink};
use crate::sink::{Action, Platform};

impl<E: Platform> Uplink<E> {
    /// Carries out one thing the platform asked for.
    pub(super) async fn act(
        &mut self,
        client: &AsyncClient,
        flight: &mut Flight,
        action: Action,
    ) -> Result<(), End> {
        match action {
            Action::Upstream(publish) => {
                for p in self.encoder.reply(publish) {
                    self.send(client, flight, p).await?;
                }
            }
            Action::Limits { max_inflight, rate } => self.apply_limits(flight, max_inflight, rate),
            Action::Ingest { topic, payload } => match &self.io.ingest {
                Some(ingest) => {
                    if ingest.submit(&topic, &payload).await.is_err() {
                        return Err(End::Shutdown);
                    }
                }
                None => tracing::debug!(sink = %self.name, "no ingest for an upstream reading"),
            },
            Action::Local(cmd) => match &self.io.local {
                Some(local) => {
                    let _ = local.send(cmd).await;
                }
                None => tracing::debug!(sink = %self.name, "no local side for a downlink message"),
            },
            Action::Own {
                method,
                params,
                reply,
            } => {
                tracing::info!(sink = %self.name, %method, "RPC to outpost");
                let answer = match &self.io.agent {
                    Some(agent) => agent.call(&method, &params),
                    None => serde_json::json!({"error": "outpost answers no RPC on this sink"}),
                };
                for p in self.encoder.reply(reply(answer)) {
                    self.send(client, flight, p).await?;
                }
            }
            Action::Control(event) => match &self.io.control {
                Some(control) => {
                    if control.try_send(event).is_err() {
                        tracing::warn!(sink = %self.name, "remote configuration busy; dropped an update (it is asked again on reconnect)");
                    }
                }
                None => {
                    tracing::debug!(sink = %self.name, "remote configuration is not taken through this sink")
                }
            },
        }
        Ok(())
    }
}
