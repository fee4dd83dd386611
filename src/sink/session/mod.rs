//! The upstream MQTT session every sink uses.
//!
//! rumqttc's own state is volatile: it forgets its in-flight publishes when the
//! broker has no session for it, and `publish()` returns no packet id. So this
//! session never trusts it with data. Each connection gets a fresh client and
//! event loop; each outbox row is published at QoS 1 and the packet id rumqttc
//! assigns (`Outgoing::Publish(pkid)`, emitted in request order) is mapped back
//! to the rows; a row is deleted only on the matching PUBACK. When a
//! connection ends for any reason, the next one starts again from the oldest
//! row still in the outbox. Duplicates are possible, losses are not.
//!
//! rumqttc reconnects in a tight loop on its own; here every failed attempt
//! waits an exponential backoff with jitter, and a refused CONNACK (bad
//! credentials) waits the maximum and says so once in plain words.
//!
//! One job per file: this loop; [`act`] (what a platform asks for);
//! [`acked`] (deletes held a moment); [`acks`] (stalled acknowledgements,
//! stamps counted as they leave); [`flight`] (rows in flight and their packet
//! ids); [`fetch`] (reading the queue); [`poison`] (records a platform can
//! never take); [`backoff`]; [`pace`] (rate windows); [`tls`]; [`explain`]
//! (failures in words); [`settings`].

mod acked;
mod acks;
mod act;
mod backoff;
mod explain;
mod fetch;
mod flight;
mod pace;
mod poison;
mod settings;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use pace::{Budget, BudgetSpec, Cost, Held, Limits};
pub use settings::Settings;
pub use tls::{client_identity, tls_config};

use acked::Acked;
use flight::{Flight, LiveSplit};
use poison::SessionLog;
use tls::Mtls;

use super::{
    check_publish, Agent, ControlEvent, Downlink, Platform, Publish, Ready, SinkError, Upstream,
};
use crate::net::BrokerUrl;
use crate::record::now_ms;
use crate::route::Admit;
use crate::source::Ingest;
use crate::stats::{self, SinkStats};
use crate::store::{Outbox, StoreError};
use crate::throttle::Throttle;
use crate::units::RateSpec;

/// rumqttc's request channel: the window plus what one encode call may add
/// beyond it (publishes not tied to rows, a batch's extra publishes).
const REQUESTS: usize = 4096;

/// Records handed to the platform's encoder at once.
const ENCODE_BATCH: usize = 256;

/// How often [`Platform::tick`] is called.
const TICK: Duration = Duration::from_secs(1);

/// Records encoded at once while a rate limit paces a backlog.
const LIVE_BATCH: usize = 32;

/// A receiving end that outlives the task using it: a sink task that is
/// restarted takes it up again.
pub type Inbox<T> = Arc<tokio::sync::Mutex<mpsc::Receiver<T>>>;

/// A channel whose receiving end is an [`Inbox`].
pub fn inbox<T>(capacity: usize) -> (mpsc::Sender<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

/// Where a session's platform actions go besides the cloud: all optional,
/// a plain MQTT sink has none of them.
#[derive(Default, Clone)]
pub struct SessionIo {
    /// Commands for the local devices (settings, RPC, publishes).
    pub local: Option<mpsc::Sender<Downlink>>,
    /// What goes up besides records: local replies, reports.
    pub upstream: Option<Inbox<Upstream>>,
    /// Readings the platform sends (uplinks) are routed and stored here.
    pub ingest: Option<Ingest>,
    /// outpost's own RPC methods.
    pub agent: Option<Arc<dyn Agent>>,
    /// The remote configuration.
    pub control: Option<mpsc::Sender<ControlEvent>>,
}

/// Everything a session needs; built once per sink at startup.
pub struct Uplink<E: Platform> {
    name: String,
    url: BrokerUrl,
    options: MqttOptions,
    window: usize,
    max_packet: usize,
    grace: Duration,
    /// A publish unacknowledged this long ends the connection.
    ack_timeout: Duration,
    backoff: Backoff,
    encoder: E,
    /// What the platform can take; a record that no longer passes (a
    /// limit or template changed since it was queued) is moved aside.
    admit: Arc<dyn Admit>,
    /// Dead-letter lines, at most one a minute per reason.
    logs: Throttle,
    outbox: Outbox,
    stats: Arc<SinkStats>,
    io: SessionIo,
    /// `io.upstream`, taken while the session runs.
    upstream: Option<tokio::sync::OwnedMutexGuard<mpsc::Receiver<Upstream>>>,
    /// The platform's rate windows, obeyed for every publish; kept across
    /// reconnects (the platform's windows are).
    rate: Budget,
    /// Records per publish and data points per record of recent telemetry
    /// (moving averages), for the drain estimate.
    shape: (f64, f64),
    /// What the current (or last) connection did, for poison detection.
    session: SessionLog,
    /// (first row of the head publish, consecutive failed sessions).
    suspect: Option<(i64, u32)>,
    /// While above zero, one record per publish; counts down with PUBACKs.
    careful: u32,
    /// Acknowledged rows whose delete is held back a moment.
    acked: Acked,
    /// mTLS: the TLS setup is rebuilt from the files before every
    /// connection, so a renewed certificate is used without a restart, and
    /// an expired one keeps this sink (only) from connecting.
    mtls: Option<Mtls>,
    /// A session without an outbox queue of its own (it sends what its
    /// platform makes, never records).
    queueless: bool,
    /// Records up to this id have had their stamp counted (a record sent
    /// again after a reconnect is not counted twice).
    ts_counted: i64,
}

/// Why a session ended.
enum End {
    Shutdown,
    Failed(Box<ConnectionError>),
    /// The broker kept the connection but acknowledged nothing for this
    /// long.
    Stalled(Duration),
}

impl<E: Platform> Uplink<E> {
    pub fn new(
        name: &str,
        cfg: &Settings,
        encoder: E,
        outbox: Outbox,
        stats: Arc<SinkStats>,
    ) -> Result<Uplink<E>, SinkError> {
        let url = BrokerUrl::parse(&cfg.url).map_err(|detail| SinkError::Config {
            sink: name.to_string(),
            detail,
        })?;
        let mut options = MqttOptions::new(cfg.client_id.clone(), url.host.clone(), url.port);
        options
            .set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_inflight(cfg.inflight)
            .set_request_channel_capacity(REQUESTS)
            .set_max_packet_size(cfg.max_packet, cfg.max_packet);
        if let Some(user) = &cfg.username {
            options.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        let mut mtls = None;
        if url.tls {
            // The client certificate is added per connection (see `Mtls`);
            // the server side is checked now, so a bad ca_file stops startup.
            options.set_transport(Transport::tls_with_config(tls_config(
                name,
                cfg.ca_file.as_deref(),
                None,
            )?));
            mtls = cfg.client_cert.clone().map(|client_cert| Mtls {
                ca_file: cfg.ca_file.clone(),
                client_cert,
                last_error: None,
            });
        }
        Ok(Uplink {
            name: name.to_string(),
            url,
            options,
            window: cfg.inflight as usize,
            max_packet: cfg.max_packet,
            grace: cfg.grace,
            ack_timeout: cfg.ack_timeout,
            backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
            admit: encoder.admission(),
            logs: Throttle::default(),
            encoder,
            outbox,
            stats,
            io: SessionIo::default(),
            upstream: None,
            rate: Budget::none(),
            shape: (1.0, 1.0),
            session: SessionLog::default(),
            suspect: None,
            careful: 0,
            acked: Acked::default(),
            mtls,
            queueless: false,
            ts_counted: 0,
        })
    }

    /// Starts with these rate limits (the platform may replace them).
    pub fn with_rate_limit(mut self, rate: &RateSpec) -> Self {
        self.rate = Budget::new(BudgetSpec::messages(rate));
        self
    }

    /// [`Uplink::with_rate_limit`] with every kind of window.
    pub fn with_budget(mut self, spec: BudgetSpec) -> Self {
        self.rate = Budget::new(spec);
        self
    }

    /// A session that has no outbox queue (it never carries records).
    pub fn queueless(mut self) -> Self {
        self.queueless = true;
        self
    }

    /// Connects the session to the rest of outpost (see [`SessionIo`]).
    pub fn with_io(mut self, io: SessionIo) -> Self {
        self.io = io;
        self
    }

    /// Delivers until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let notify = match self.outbox.notifier(&self.name) {
            Some(n) => n,
            // A session that carries no records (a child's firmware).
            None if self.queueless => Arc::new(tokio::sync::Notify::new()),
            None => {
                tracing::error!(sink = %self.name, "no outbox queue for this sink");
                return;
            }
        };
        if let Some(inbox) = self.io.upstream.clone() {
            self.upstream = Some(inbox.lock_owned().await);
        }
        loop {
            if let Err(delay) = self.load_client_cert() {
                tokio::select! {
                    _ = sleep(delay) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let end = self.session(&shutdown, &notify).await;
            self.stats
                .connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let delay = match end {
                End::Shutdown => return,
                ended => {
                    if self.session.connected {
                        self.check_poison().await;
                    }
                    let (text, delay) = match ended {
                        End::Failed(e) => (e.to_string(), self.explain(*e)),
                        End::Stalled(waited) => (
                            format!(
                                "the broker stopped acknowledging: no PUBACK for {} s (ack_timeout)",
                                waited.as_secs()
                            ),
                            self.backoff.next_delay(),
                        ),
                        End::Shutdown => return,
                    };
                    if let Ok(mut last) = self.stats.last_error.lock() {
                        *last = Some(text);
                    }
                    let wait = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                    self.stats.next_attempt_ms.store(
                        crate::clock::mono_ms().saturating_add(wait).max(1),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    delay
                }
            };
            tokio::select! {
                _ = sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn session(&mut self, shutdown: &CancellationToken, notify: &tokio::sync::Notify) -> End {
        self.session = SessionLog::default();
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), REQUESTS);
        let (events_tx, mut events) = mpsc::channel::<Result<Event, ConnectionError>>(1024);
        let driver = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let failed = ev.is_err();
                if events_tx.send(ev).await.is_err() || failed {
                    break;
                }
            }
        });
        let mut end = self.deliver(&client, &mut events, shutdown, notify).await;
        // Committed before the next connection fetches from the queue's
        // head, which would send these rows again.
        if self.delete_acked().await.is_err() || self.outbox.flush().await.is_err() {
            end = End::Shutdown;
        }
        if matches!(end, End::Shutdown) {
            // Say goodbye properly; the broker then discards no will and the
            // socket closes cleanly. Bounded: the peer may be gone.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(ev) = events.recv().await {
                    if matches!(ev, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        driver.abort();
        end
    }

    async fn deliver(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        shutdown: &CancellationToken,
        notify: &tokio::sync::Notify,
    ) -> End {
        // Wait for the CONNACK before sending anything.
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Failed(Box::new(e)),
                    None => return End::Failed(Box::new(ConnectionError::RequestsDone)),
                },
                _ = shutdown.cancelled() => return End::Shutdown,
            }
        }
        self.backoff.reset();
        self.session.connected = true;
        self.stats
            .connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        stats::add(&self.stats.connects, 1);
        self.stats
            .next_attempt_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(sink = %self.name, broker = %format!("{}:{}", self.url.host, self.url.port), "connected upstream");
        if let Some(control) = &self.io.control {
            let _ = control.try_send(ControlEvent::Connected);
        }

        let mut flight = Flight::new(self.window);
        flight.qos0 = self.encoder.qos() == QoS::AtMostOnce;
        if self.encoder.live_first() {
            match self.outbox.last_id(&self.name).await {
                Ok(floor) => {
                    flight.live = Some(LiveSplit {
                        floor,
                        live_cursor: floor,
                        backlog_done: floor == 0,
                    })
                }
                Err(_) => return End::Shutdown,
            }
        }
        let start = self.encoder.session_start();
        // A platform that takes QoS 0 only (The Things Stack, seed 004)
        // is subscribed at QoS 0 too.
        let sub_qos = self.encoder.qos();
        for topic in start.subscribe {
            if client.try_subscribe(topic, sub_qos).is_err() {
                return End::Failed(Box::new(ConnectionError::RequestsDone));
            }
        }
        for p in start.publish {
            if let Err(end) = self.send(client, &mut flight, p).await {
                return end;
            }
        }
        let mut draining: Option<Instant> = None;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.acked.due() && self.delete_acked().await.is_err() {
                return End::Shutdown;
            }
            if draining.is_none() {
                if let Err(end) = self.fill(client, &mut flight).await {
                    return end;
                }
            } else if flight.is_empty() {
                return End::Shutdown;
            }
            let can_take_more = draining.is_none() && flight.has_room();
            let deadline =
                draining.unwrap_or_else(|| crate::units::deadline(Duration::from_secs(86_400)));
            let unblock = flight.blocked_until;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        for action in self.encoder.on_message(&p.topic, &p.payload) {
                            if let Err(end) = self.act(client, &mut flight, action).await {
                                return end;
                            }
                        }
                    }
                    Some(Ok(ev)) => {
                        if let Some(ids) = flight.on_event(&ev) {
                            let n = ids.len() as u64;
                            if !ids.is_empty() {
                                self.acknowledged();
                                self.session.acks = self.session.acks.saturating_add(1);
                                self.rate.acked();
                                self.suspect = None;
                                self.careful = self.careful.saturating_sub(1);
                            }
                            self.acked.add(ids);
                            stats::add(&self.stats.delivered, n);
                        }
                    }
                    Some(Err(e)) => return End::Failed(Box::new(e)),
                    None => return End::Failed(Box::new(ConnectionError::RequestsDone)),
                },
                Some(up) = next_upstream(&mut self.upstream) => {
                    let publishes = match up {
                        Upstream::Publish(p) => self.encoder.reply(p),
                        Upstream::Report(r) => self.encoder.report(r),
                        Upstream::Presence(n) => {
                            self.encoder.presence(n);
                            Vec::new()
                        }
                        Upstream::Local { topic, payload } => {
                            for action in self.encoder.on_local(&topic, &payload) {
                                if let Err(end) = self.act(client, &mut flight, action).await {
                                    return end;
                                }
                            }
                            Vec::new()
                        }
                    };
                    for p in publishes {
                        if let Err(end) = self.send(client, &mut flight, p).await {
                            return end;
                        }
                    }
                }
                _ = ticker.tick(), if draining.is_none() => {
                    if let Some(waited) = flight.oldest_wait(Instant::now()) {
                        if waited >= self.ack_timeout {
                            return self.stalled(waited, flight.len());
                        }
                    }
                    let drained = !flight.more && flight.fetched_is_empty() && flight.outgoing.is_empty();
                    for p in self.encoder.tick(std::time::Instant::now(), drained) {
                        if let Err(end) = self.send(client, &mut flight, p).await {
                            return end;
                        }
                    }
                }
                _ = notify.notified(), if can_take_more => {
                    flight.more = true;
                    flight.live_dirty = flight.live.is_some();
                }
                _ = tokio::time::sleep_until(unblock.unwrap_or(deadline)), if unblock.is_some() && draining.is_none() => {}
                _ = tokio::time::sleep_until(self.acked.due_at().unwrap_or(deadline)), if self.acked.due_at().is_some() => {}
                _ = shutdown.cancelled(), if draining.is_none() => {
                    tracing::info!(sink = %self.name, in_flight = flight.len(), "stopping: waiting for in-flight acknowledgements");
                    draining = Some(crate::units::deadline(self.grace));
                }
                _ = tokio::time::sleep_until(deadline), if draining.is_some() => {
                    tracing::warn!(sink = %self.name, in_flight = flight.len(), "stopping before every publish was acknowledged; those records stay queued and are resent on the next start");
                    return End::Shutdown;
                }
            }
        }
    }

    /// Hands the acknowledged rows to the outbox to delete (committed with
    /// the next readings, or within a second).
    async fn delete_acked(&mut self) -> Result<(), StoreError> {
        let ids = self.acked.take();
        if ids.is_empty() {
            return Ok(());
        }
        self.outbox.delete(&self.name, ids).await
    }

    /// Publishes queued records until the in-flight window is full or the
    /// outbox has nothing more.
    async fn fill(&mut self, client: &AsyncClient, flight: &mut Flight) -> Result<(), End> {
        self.flush(client, flight)?;
        // Looking for a poison record: one publish at a time, so that a
        // hang-up can be pinned on the one that caused it.
        while flight.has_room()
            && flight.outgoing.is_empty()
            && (self.careful == 0 || flight.is_empty())
        {
            if flight.live_dirty && !flight.fetched_is_empty() {
                flight.live_dirty = false;
                if let Err(e) = self.refill_live(flight).await {
                    tracing::error!(sink = %self.name, error = %e, "cannot read the outbox");
                    return Err(End::Shutdown);
                }
            }
            if flight.fetched_is_empty() {
                if !flight.more {
                    return Ok(());
                }
                if let Err(e) = self.refill(flight).await {
                    tracing::error!(sink = %self.name, error = %e, "cannot read the outbox");
                    return Err(End::Shutdown);
                }
                continue;
            }
            // Under a rate limit, encode little ahead: what is encoded waits
            // in line, and a live reading must not queue behind much backlog.
            let batch = if self.careful > 0 {
                1
            } else if flight.live.is_some() && self.rate.is_limited() {
                LIVE_BATCH
            } else {
                ENCODE_BATCH
            };
            let batch = match self.encoder.ready(&flight.peek(batch), now_ms()) {
                Ready::All => batch,
                Ready::Count(n) => n.clamp(1, batch),
                Ready::WaitMs(ms) => {
                    // Bring in what else is queued, so the wait merges it.
                    if flight.more
                        && flight
                            .fetched
                            .len()
                            .saturating_add(flight.fetched_live.len())
                            < batch
                    {
                        if let Err(e) = self.refill(flight).await {
                            tracing::error!(sink = %self.name, error = %e, "cannot read the outbox");
                            return Err(End::Shutdown);
                        }
                    }
                    flight.blocked_until =
                        Instant::now().checked_add(Duration::from_millis(ms.max(1)));
                    return Ok(());
                }
            };
            let records = flight.take(batch);
            self.count_stamps(&records);
            #[cfg(debug_assertions)]
            fault(&records);
            let (publishes, refused) = self.encoder.encode_admitted(records, self.admit.as_ref());
            for (r, why) in refused {
                self.refuse(r.id, &r.device, why.reason).await;
            }
            for publish in publishes {
                self.send(client, flight, publish).await?;
            }
        }
        Ok(())
    }

    /// Queues one publish and sends what the rate limit allows.
    async fn send(
        &mut self,
        client: &AsyncClient,
        flight: &mut Flight,
        publish: Publish,
    ) -> Result<(), End> {
        if let Err(why) = check_publish(&publish.topic, publish.payload.len(), self.max_packet) {
            // Never handed to the client: a publish it refuses would end
            // every session at the same record.
            self.undeliverable(publish, why).await;
            return Ok(());
        }
        flight.outgoing.push_back(publish);
        self.flush(client, flight)
    }

    /// Hands queued publishes to rumqttc while the rate limit allows; else
    /// notes when to try again.
    fn flush(&mut self, client: &AsyncClient, flight: &mut Flight) -> Result<(), End> {
        flight.blocked_until = None;
        while let Some(publish) = flight.outgoing.pop_front() {
            let now = Instant::now();
            let cost = self.encoder.cost(&publish);
            if let Some(held) = self.rate.next_allowed(now, &cost) {
                flight.outgoing.push_front(publish);
                flight.blocked_until = Some(held.until);
                self.session.limited = true;
                self.note_held(Some(&held));
                return Ok(());
            }
            if let Err(e) =
                client.try_publish(publish.topic, self.encoder.qos(), false, publish.payload)
            {
                tracing::warn!(sink = %self.name, error = %e, "cannot hand a publish to the MQTT client");
                return Err(End::Failed(Box::new(ConnectionError::RequestsDone)));
            }
            self.rate.record(now, &cost);
            self.note_shape(publish.ids.len(), &cost);
            if self.session.head.is_none() && !publish.ids.is_empty() {
                self.session.head = Some(publish.ids.clone());
            }
            flight.sent(publish.ids);
        }
        self.note_held(None);
        Ok(())
    }

    fn apply_limits(
        &mut self,
        flight: &mut Flight,
        max_inflight: Option<usize>,
        rate: Option<BudgetSpec>,
    ) {
        if let Some(n) = max_inflight {
            flight.window = n.clamp(1, self.window);
        }
        if let Some(r) = rate {
            if &r != self.rate.spec() {
                // What was sent stays counted: the platform's windows
                // did not restart with its answer.
                let mut next = Budget::new(r);
                std::mem::swap(&mut next, &mut self.rate);
                self.rate.inherit(next);
            }
        }
        tracing::info!(sink = %self.name, in_flight = flight.window, "applied the platform's session limits");
    }
}

/// A fault the integration tests inject into a debug build (never in a
/// release build): with `OUTPOST_TEST_FAULTS=1`, the first record of device
/// `outpost-fault-sink` panics the session, once per process.
#[cfg(debug_assertions)]
fn fault(records: &[crate::record::Record]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if std::env::var_os("OUTPOST_TEST_FAULTS").is_some()
        && records.iter().any(|r| r.device == "outpost-fault-sink")
        && !DONE.swap(true, Ordering::SeqCst)
    {
        panic!("test fault: the sink session panics");
    }
}

/// The next publish or report for upstream, if any side sends them.
async fn next_upstream(
    upstream: &mut Option<tokio::sync::OwnedMutexGuard<mpsc::Receiver<Upstream>>>,
) -> Option<Upstream> {
    match upstream {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
