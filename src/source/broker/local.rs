//! outpost's own clients of the local broker, in process: the downlink to
//! devices, the serial ports' control topics, the LoRaWAN RPC bridge. They
//! never take one of `max_connections`, cannot be taken over by a LAN
//! client with the same id (they have none), and go away with their
//! handle.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::codec::{check_filter, SubOpts};
use super::core::LocalMessage;
use super::session::Message;
use super::trie::Subscriber;
use super::Inner;

pub struct LocalClient {
    id: u64,
    inner: Arc<Inner>,
    rx: mpsc::Receiver<LocalMessage>,
}

impl LocalClient {
    pub(super) fn new(inner: Arc<Inner>, capacity: usize) -> LocalClient {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = inner.core().add_internal(tx);
        LocalClient { id, inner, rx }
    }

    /// Subscribes (QoS 1); retained messages matching it arrive at once.
    pub fn subscribe(&self, filter: &str) -> Result<(), String> {
        check_filter(filter).map_err(|e| format!("`{filter}`: {e}"))?;
        let opts = SubOpts {
            qos: 1,
            ..SubOpts::default()
        };
        self.inner.core().subscribe(
            &Subscriber::Internal(self.id),
            &[(filter.to_string(), opts)],
            None,
        );
        Ok(())
    }

    /// Publishes to the local subscribers (not routed to any sink).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut msg = Message::new(topic, payload.into(), 1, retain);
        msg.from = Some(Subscriber::Internal(self.id));
        self.inner.core().publish(Arc::new(msg));
    }

    /// The next message on a subscribed topic; `None` once the broker is gone.
    pub async fn recv(&mut self) -> Option<LocalMessage> {
        self.rx.recv().await
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        self.inner.core().remove_internal(self.id);
    }
}
