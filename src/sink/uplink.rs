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

use std::collections::{HashMap, VecDeque};
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use super::rate::RateLimit;
use super::{Action, Platform, Publish, Ready, SinkError};
use crate::config::MqttSinkConfig;
use crate::control::downlink::Downlink;
use crate::record::Record;
use crate::stats::{self, SinkStats};
use crate::store::Outbox;

/// A parsed `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "`{url}` must start with mqtt:// or mqtts:// (e.g. mqtts://mqtt.example.com:8883)"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "`{url}`: give only host and port; put credentials in username/password"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[` in IPv6 address"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{url}`: `{p}` is not a port number"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerUrl { tls, host, port })
    }
}

/// rumqttc's request channel: the window plus what one encode call may add
/// beyond it (publishes not tied to rows, a batch's extra publishes).
const REQUESTS: usize = 4096;

/// Records handed to the platform's encoder at once.
const ENCODE_BATCH: usize = 256;

/// Records encoded at once while a rate limit paces a backlog.
const LIVE_BATCH: usize = 32;

/// Exponential backoff with ±25 % jitter, so a site full of gateways does not
/// reconnect in lockstep after an outage.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait before the next attempt; doubles each call up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base)
    }

    /// The longest wait, for failures that retrying soon cannot fix.
    pub fn give_up_delay(&mut self) -> Duration {
        self.next = self.max;
        jitter(self.max)
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// The connection settings every MQTT-speaking sink type has.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// mTLS: (certificate chain, private key).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub inflight: u16,
    pub max_packet: usize,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub grace: Duration,
}

impl From<&MqttSinkConfig> for Settings {
    fn from(c: &MqttSinkConfig) -> Settings {
        Settings {
            url: c.url.clone(),
            client_id: c.client_id.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
            ca_file: c.ca_file.clone(),
            client_cert: c.cert_file.clone().zip(c.key_file.clone()),
            inflight: c.inflight,
            max_packet: c.max_packet_size.0 as usize,
            keep_alive: c.keep_alive.0,
            reconnect_min: c.reconnect_min.0,
            reconnect_max: c.reconnect_max.0,
            grace: c.shutdown_grace.0,
        }
    }
}

/// Everything a session needs; built once per sink at startup.
pub struct Uplink<E: Platform> {
    name: String,
    url: BrokerUrl,
    options: MqttOptions,
    window: usize,
    max_packet: usize,
    grace: Duration,
    backoff: Backoff,
    encoder: E,
    outbox: Outbox,
    stats: Arc<SinkStats>,
    /// Where downlink commands go, and where their upstream replies come from.
    downlink: Option<(mpsc::Sender<Downlink>, mpsc::Receiver<Publish>)>,
    /// The platform's message rate limits, obeyed for every publish.
    rate: RateLimit,
    /// What the current (or last) connection did, for poison detection.
    session: SessionLog,
    /// (first row of the head publish, consecutive failed sessions).
    suspect: Option<(i64, u32)>,
    /// While above zero, one record per publish; counts down with PUBACKs.
    careful: u32,
    /// mTLS: the TLS setup is rebuilt from the files before every
    /// connection, so a renewed certificate is used without a restart, and
    /// an expired one keeps this sink (only) from connecting.
    mtls: Option<Mtls>,
    /// Where readings that come from the platform go (see `Action::Ingest`).
    ingest: Option<mpsc::Sender<(String, Vec<u8>)>>,
}

struct Mtls {
    ca_file: Option<std::path::PathBuf>,
    client_cert: (std::path::PathBuf, std::path::PathBuf),
    /// The last problem logged, so that it is logged once, not per attempt.
    last_error: Option<String>,
}

/// TLS alerts a server sends when it does not accept a client certificate.
const CLIENT_CERT_ALERTS: &[&str] = &[
    "fatal alert: UnknownCA",
    "fatal alert: BadCertificate",
    "fatal alert: CertificateUnknown",
    "fatal alert: CertificateExpired",
    "fatal alert: CertificateRevoked",
    "fatal alert: CertificateRequired",
    "fatal alert: AccessDenied",
    "fatal alert: DecryptError",
];

/// Failed sessions in a row with the same single record first, before it
/// is moved to the dead letters.
const POISON_STRIKES: u32 = 3;

/// PUBACKs in one-record-per-publish mode after a suspect batch.
const CAREFUL_ACKS: u32 = 100;

#[derive(Debug, Default, Clone)]
struct SessionLog {
    connected: bool,
    /// PUBACKs for publishes that carried rows.
    acks: u64,
    /// Rows of the first publish of the session that carried rows.
    head: Option<Vec<i64>>,
}

/// Why a session ended.
enum End {
    Shutdown,
    Failed(Box<ConnectionError>),
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
            backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
            encoder,
            outbox,
            stats,
            downlink: None,
            rate: RateLimit::none(),
            session: SessionLog::default(),
            suspect: None,
            careful: 0,
            mtls,
            ingest: None,
        })
    }

    /// Starts with these rate limits (the platform may replace them).
    pub fn with_rate_limit(mut self, rate: RateLimit) -> Self {
        self.rate = rate;
        self
    }

    /// Connects the session to the control side: local actions go to
    /// `commands`, and publishes arriving on `replies` are sent upstream.
    pub fn with_downlink(
        mut self,
        commands: mpsc::Sender<Downlink>,
        replies: mpsc::Receiver<Publish>,
    ) -> Self {
        self.downlink = Some((commands, replies));
        self
    }

    /// Delivers until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(notify) = self.outbox.notifier(&self.name) else {
            tracing::error!(sink = %self.name, "no outbox queue for this sink");
            return;
        };
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
                End::Failed(e) => {
                    if self.session.connected {
                        self.check_poison().await;
                    }
                    self.explain(*e)
                }
            };
            tokio::select! {
                _ = sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Readings the platform sends (uplinks) are routed and stored.
    pub fn with_ingest(mut self, tx: mpsc::Sender<(String, Vec<u8>)>) -> Self {
        self.ingest = Some(tx);
        self
    }

    /// Reads and checks the client certificate and key for the next
    /// connection. A problem is logged (once until it changes) and this
    /// sink waits `reconnect_max`; its records stay queued.
    fn load_client_cert(&mut self) -> Result<(), Duration> {
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

    /// Logs why a connection failed, in words, and picks the wait.
    fn explain(&mut self, e: ConnectionError) -> Duration {
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
        let end = self.deliver(&client, &mut events, shutdown, notify).await;
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
        tracing::info!(sink = %self.name, broker = %format!("{}:{}", self.url.host, self.url.port), "connected upstream");

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
        for topic in start.subscribe {
            if client.try_subscribe(topic, QoS::AtLeastOnce).is_err() {
                return End::Failed(Box::new(ConnectionError::RequestsDone));
            }
        }
        for p in start.publish {
            if let Err(end) = self.send(client, &mut flight, p).await {
                return end;
            }
        }
        let mut draining: Option<Instant> = None;
        loop {
            if draining.is_none() {
                if let Err(end) = self.fill(client, &mut flight).await {
                    return end;
                }
            } else if flight.is_empty() {
                return End::Shutdown;
            }
            let can_take_more = draining.is_none() && flight.has_room();
            let deadline = draining.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let unblock = flight.blocked_until;
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        for action in self.encoder.on_message(&p.topic, &p.payload) {
                            match action {
                                Action::Upstream(publish) => {
                                    if let Err(end) = self.send(client, &mut flight, publish).await {
                                        return end;
                                    }
                                }
                                Action::Limits { max_inflight, rate } => {
                                    self.apply_limits(&mut flight, max_inflight, rate);
                                }
                                Action::Ingest { topic, payload } => match &self.ingest {
                                    Some(tx) => {
                                        if tx.try_send((topic, payload)).is_err() {
                                            tracing::warn!(sink = %self.name, "reading from upstream dropped: the ingest queue is full");
                                        }
                                    }
                                    None => tracing::debug!(sink = %self.name, "no ingest for an upstream reading"),
                                },
                                Action::Local(cmd) => match &self.downlink {
                                    Some((commands, _)) => {
                                        let _ = commands.send(cmd).await;
                                    }
                                    None => tracing::debug!(sink = %self.name, "no local side for a downlink message"),
                                },
                            }
                        }
                    }
                    Some(Ok(ev)) => {
                        if let Some(ids) = flight.on_event(&ev) {
                            let n = ids.len() as u64;
                            if !ids.is_empty() {
                                self.session.acks += 1;
                                self.suspect = None;
                                self.careful = self.careful.saturating_sub(1);
                            }
                            if self.outbox.delete(ids).await.is_err() {
                                return End::Shutdown;
                            }
                            stats::add(&self.stats.delivered, n);
                        }
                    }
                    Some(Err(e)) => return End::Failed(Box::new(e)),
                    None => return End::Failed(Box::new(ConnectionError::RequestsDone)),
                },
                Some(reply) = next_reply(&mut self.downlink) => {
                    if let Err(end) = self.send(client, &mut flight, reply).await {
                        return end;
                    }
                }
                _ = notify.notified(), if can_take_more => {
                    flight.more = true;
                    flight.live_dirty = flight.live.is_some();
                }
                _ = tokio::time::sleep_until(unblock.unwrap_or(deadline)), if unblock.is_some() && draining.is_none() => {}
                _ = shutdown.cancelled(), if draining.is_none() => {
                    tracing::info!(sink = %self.name, in_flight = flight.len(), "stopping: waiting for in-flight acknowledgements");
                    draining = Some(Instant::now() + self.grace);
                }
                _ = tokio::time::sleep_until(deadline), if draining.is_some() => {
                    tracing::warn!(sink = %self.name, in_flight = flight.len(), "stopping before every publish was acknowledged; those records stay queued and are resent on the next start");
                    return End::Shutdown;
                }
            }
        }
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
            let batch = match self
                .encoder
                .ready(&flight.peek(batch), crate::route::now_ms())
            {
                Ready::All => batch,
                Ready::Count(n) => n.clamp(1, batch),
                Ready::WaitMs(ms) => {
                    // Bring in what else is queued, so the wait merges it.
                    if flight.more && flight.fetched.len() + flight.fetched_live.len() < batch {
                        if let Err(e) = self.refill(flight).await {
                            tracing::error!(sink = %self.name, error = %e, "cannot read the outbox");
                            return Err(End::Shutdown);
                        }
                    }
                    flight.blocked_until = Some(Instant::now() + Duration::from_millis(ms.max(1)));
                    return Ok(());
                }
            };
            let mut records: Vec<Record> = Vec::with_capacity(batch);
            for r in flight.take(batch) {
                match self.encoder.validate(&r) {
                    Ok(()) => records.push(r),
                    Err(why) => {
                        tracing::error!(sink = %self.name, record = r.id, device = %r.device, reason = %why, "record the platform cannot take: moved to the dead letters");
                        stats::add(&self.stats.undeliverable, 1);
                        let _ = self.outbox.dead_letter(vec![r.id], why).await;
                    }
                }
            }
            for publish in self.encoder.encode(&records) {
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
        if publish.topic.len() + publish.payload.len() + 8 > self.max_packet {
            self.undeliverable(publish).await;
            return Ok(());
        }
        flight.outgoing.push_back(publish);
        self.flush(client, flight)
    }

    /// Fetches the next records. With a live split, what arrived since the
    /// connection began goes before the backlog, so a long drain never
    /// holds back current readings.
    async fn refill(&mut self, flight: &mut Flight) -> Result<(), crate::store::StoreError> {
        let limit = self.window.max(ENCODE_BATCH);
        let Some(split) = flight.live.as_mut() else {
            let batch = self.outbox.fetch(&self.name, flight.cursor, limit).await?;
            flight.refill(batch, limit);
            return Ok(());
        };
        let live = self.read_live(split, limit).await?;
        let backlog = if split.backlog_done {
            Vec::new()
        } else {
            self.outbox
                .fetch_range(&self.name, flight.cursor, split.floor + 1, limit)
                .await?
        };
        split.backlog_done |= backlog.len() < limit;
        if let Some(last) = backlog.last() {
            flight.cursor = last.id;
        }
        flight.more = live.len() >= limit || !split.backlog_done;
        flight.fetched_live.extend(live);
        flight.fetched.extend(backlog);
        Ok(())
    }

    /// The next rows that arrived during this connection.
    async fn read_live(
        &self,
        split: &mut LiveSplit,
        limit: usize,
    ) -> Result<Vec<Record>, crate::store::StoreError> {
        let live = self
            .outbox
            .fetch_range(&self.name, split.live_cursor, i64::MAX, limit)
            .await?;
        if let Some(last) = live.last() {
            split.live_cursor = last.id;
        }
        Ok(live)
    }

    /// Puts readings that arrived during this connection at the front.
    async fn refill_live(&mut self, flight: &mut Flight) -> Result<(), crate::store::StoreError> {
        let limit = self.window.max(ENCODE_BATCH);
        let Some(split) = flight.live.as_mut() else {
            return Ok(());
        };
        let live = self.read_live(split, limit).await?;
        if live.len() >= limit {
            flight.more = true;
        }
        flight.fetched_live.extend(live);
        Ok(())
    }

    /// Hands queued publishes to rumqttc while the rate limit allows; else
    /// notes when to try again.
    fn flush(&mut self, client: &AsyncClient, flight: &mut Flight) -> Result<(), End> {
        flight.blocked_until = None;
        while let Some(publish) = flight.outgoing.pop_front() {
            let now = Instant::now();
            if let Some(at) = self.rate.next_allowed(now) {
                flight.outgoing.push_front(publish);
                flight.blocked_until = Some(at);
                return Ok(());
            }
            if let Err(e) =
                client.try_publish(publish.topic, self.encoder.qos(), false, publish.payload)
            {
                tracing::warn!(sink = %self.name, error = %e, "cannot hand a publish to the MQTT client");
                return Err(End::Failed(Box::new(ConnectionError::RequestsDone)));
            }
            self.rate.record(now);
            if self.session.head.is_none() && !publish.ids.is_empty() {
                self.session.head = Some(publish.ids.clone());
            }
            flight.sent(publish.ids);
        }
        Ok(())
    }

    fn apply_limits(
        &mut self,
        flight: &mut Flight,
        max_inflight: Option<usize>,
        rate: Option<RateLimit>,
    ) {
        if let Some(n) = max_inflight {
            flight.window = n.clamp(1, self.window);
        }
        if let Some(r) = rate {
            self.rate = r;
        }
        tracing::info!(sink = %self.name, in_flight = flight.window, "applied the platform's session limits");
    }

    /// A record that can never fit the upstream packet limit would block its
    /// queue forever; it is removed, counted and logged instead.
    async fn undeliverable(&mut self, p: Publish) {
        let topic = self.encoder.topic_for_logs(&p.topic);
        tracing::error!(
            sink = %self.name,
            topic = %topic,
            bytes = p.payload.len(),
            max_packet_size = self.max_packet,
            "record larger than the upstream packet limit: moved to the dead letters (raise max_packet_size if the platform allows)"
        );
        stats::add(&self.stats.undeliverable, p.ids.len() as u64);
        let reason = format!(
            "{} bytes on {}: larger than the upstream packet limit of {} bytes",
            p.payload.len(),
            topic,
            self.max_packet
        );
        let _ = self.outbox.dead_letter(p.ids, reason).await;
    }

    /// After a session that ended with no PUBACK at all: if it is always the
    /// same publish that goes first before the platform drops us, that
    /// record is poison. A batch is first split (one record per publish) to
    /// find which record it is; a single record that fails three times in a
    /// row is moved to the dead letters so the queue behind it moves on.
    async fn check_poison(&mut self) {
        let (Some(head), true) = (self.session.head.clone(), self.session.acks == 0) else {
            return;
        };
        let Some(&first) = head.first() else { return };
        let count = match self.suspect {
            Some((id, n)) if id == first => n + 1,
            _ => 1,
        };
        self.suspect = Some((first, count));
        if head.len() > 1 {
            if count >= 2 && self.careful == 0 {
                tracing::warn!(sink = %self.name, "the platform dropped the connection twice right after the same batch; sending one record per publish to find the cause");
                self.careful = CAREFUL_ACKS;
            }
        } else if count >= POISON_STRIKES {
            tracing::error!(
                sink = %self.name,
                record = first,
                strikes = count,
                "the platform drops the connection every time this record is sent: moved to the dead letters (see `outpost dead-letters`)"
            );
            stats::add(&self.stats.undeliverable, 1);
            let reason = format!("the platform closed the connection {count} times in a row right after this record was sent");
            let _ = self.outbox.dead_letter(head, reason).await;
            self.suspect = None;
        }
    }
}

/// The next upstream reply from the control side, if there is one.
async fn next_reply(
    downlink: &mut Option<(mpsc::Sender<Downlink>, mpsc::Receiver<Publish>)>,
) -> Option<Publish> {
    match downlink {
        Some((_, replies)) => replies.recv().await,
        None => std::future::pending().await,
    }
}

/// What one connection has in flight: records fetched but not yet sent,
/// publishes handed to rumqttc awaiting their packet id, and packet ids
/// awaiting their PUBACK.
struct Flight {
    window: usize,
    /// Highest outbox id fetched on this connection.
    cursor: i64,
    /// The outbox may hold more than was fetched.
    more: bool,
    /// Fetched and not yet encoded: the backlog (or the whole queue) ...
    fetched: VecDeque<Record>,
    /// ... and, with a live split, what arrived during this connection,
    /// which goes first.
    fetched_live: VecDeque<Record>,
    /// Encoded, waiting for the rate limit.
    outgoing: VecDeque<Publish>,
    /// The rate limit allows the next publish then.
    blocked_until: Option<Instant>,
    awaiting_pkid: VecDeque<Vec<i64>>,
    in_flight: HashMap<u16, Vec<i64>>,
    /// QoS 0: rows written to the socket since the last PINGREQ ...
    written: Vec<Vec<i64>>,
    /// ... and rows written before the PINGREQ now awaiting its PINGRESP.
    pinged: Vec<Vec<i64>>,
    qos0: bool,
    /// For platforms that order by timestamp, not arrival: the backlog and
    /// what arrives during this connection are read separately.
    live: Option<LiveSplit>,
    /// New live rows were committed since the last live read.
    live_dirty: bool,
}

/// The queue as two parts: rows up to `floor` (queued before this
/// connection) and rows after it (live).
struct LiveSplit {
    floor: i64,
    live_cursor: i64,
    backlog_done: bool,
}

impl Flight {
    fn new(window: usize) -> Flight {
        Flight {
            window,
            cursor: 0,
            more: true,
            fetched: VecDeque::new(),
            fetched_live: VecDeque::new(),
            outgoing: VecDeque::new(),
            blocked_until: None,
            awaiting_pkid: VecDeque::new(),
            written: Vec::new(),
            pinged: Vec::new(),
            qos0: false,
            in_flight: HashMap::new(),
            live: None,
            live_dirty: false,
        }
    }

    fn len(&self) -> usize {
        self.awaiting_pkid.len() + self.in_flight.len() + self.written.len() + self.pinged.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn has_room(&self) -> bool {
        self.len() < self.window
    }

    fn fetched_is_empty(&self) -> bool {
        self.fetched.is_empty() && self.fetched_live.is_empty()
    }

    /// The next `n` records `take` would give, without taking them.
    fn peek(&self, n: usize) -> Vec<&Record> {
        self.fetched_live
            .iter()
            .chain(self.fetched.iter())
            .take(n)
            .collect()
    }

    /// Up to `n` records to encode: live ones first, each part in id order.
    fn take(&mut self, n: usize) -> Vec<Record> {
        let live = self.fetched_live.len().min(n);
        let mut out: Vec<Record> = self.fetched_live.drain(..live).collect();
        let rest = self.fetched.len().min(n - live);
        out.extend(self.fetched.drain(..rest));
        out
    }

    fn refill(&mut self, batch: Vec<Record>, limit: usize) {
        self.more = batch.len() >= limit;
        if let Some(last) = batch.last() {
            self.cursor = last.id;
        }
        self.fetched.extend(batch);
    }

    fn sent(&mut self, ids: Vec<i64>) {
        self.awaiting_pkid.push_back(ids);
    }

    /// Tracks packet ids; returns the rows a PUBACK has delivered.
    fn on_event(&mut self, ev: &Event) -> Option<Vec<i64>> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(ids) = self.awaiting_pkid.pop_front() {
                    if !self.qos0 {
                        self.in_flight.insert(*pkid, ids);
                    } else if !ids.is_empty() {
                        self.written.push(ids);
                    }
                }
                None
            }
            Event::Incoming(Packet::PubAck(ack)) => self.in_flight.remove(&ack.pkid),
            Event::Outgoing(Outgoing::PingReq) if self.qos0 => {
                self.pinged.append(&mut self.written);
                None
            }
            Event::Incoming(Packet::PingResp) if self.qos0 && !self.pinged.is_empty() => {
                Some(self.pinged.drain(..).flatten().collect())
            }
            _ => None,
        }
    }
}

/// TLS for `mqtts://`: server verification against `ca_file`, or the system
/// roots when none is given. ring is the only crypto provider compiled in.
pub(crate) fn tls_config(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://localhost"),
            Ok(BrokerUrl {
                tls: false,
                host: "localhost".into(),
                port: 1883
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example:8884"),
            Ok(BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8884
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]:1999"),
            Ok(BrokerUrl {
                tls: false,
                host: "::1".into(),
                port: 1999
            })
        );
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://x:notaport").is_err());
        assert!(BrokerUrl::parse("mqtt://user:pw@x").is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<f64> = (0..6).map(|_| b.next_delay().as_secs_f64()).collect();
        for (got, base) in d.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(*got >= base * 0.75 && *got <= base * 1.25, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }

    #[test]
    fn flight_maps_packet_ids_to_rows() {
        let mut f = Flight::new(2);
        f.sent(vec![10]);
        f.sent(vec![11, 12]);
        assert!(!f.has_room());
        assert_eq!(f.on_event(&Event::Outgoing(Outgoing::Publish(1))), None);
        assert_eq!(f.on_event(&Event::Outgoing(Outgoing::Publish(2))), None);
        let ack = |pkid| Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid }));
        assert_eq!(f.on_event(&ack(2)), Some(vec![11, 12]));
        assert_eq!(f.on_event(&ack(2)), None);
        assert_eq!(f.on_event(&ack(1)), Some(vec![10]));
        assert!(f.is_empty());
    }
}
