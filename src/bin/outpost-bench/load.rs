//! The load: QoS 1 publishers, the upstream collector that times every
//! arrival, and idle clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One arrival upstream: end-to-end latency (µs), `device/seq`, when.
pub type Arrival = (u64, String, Instant);

/// A subscriber on the upstream that records every arrival.
pub struct Collector {
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(port: u16, filter: &str, id: &str) -> anyhow::Result<Collector> {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(1000)
            .set_clean_session(false);
        let (client, mut events) = AsyncClient::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let arrivals = Arc::new(Mutex::new(Vec::<Arrival>::new()));
        let sink = arrivals.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = now_us();
                        let at = Instant::now();
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        let device = p.topic.split('/').nth(1).unwrap_or_default().to_string();
                        for one in readings(v) {
                            let sent = one["sent_us"].as_u64().unwrap_or(now);
                            let key = format!("{device}/{}", one["seq"]);
                            if let Ok(mut a) = sink.lock() {
                                a.push((now.saturating_sub(sent), key, at));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("upstream subscription")??;
        Ok(Collector { arrivals, task })
    }

    /// Forgets every arrival so far (between two runs on one broker).
    pub fn clear(&self) {
        if let Ok(mut a) = self.arrivals.lock() {
            a.clear();
        }
    }

    pub fn count(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Waits until `n` arrived, or nothing new came for `quiet`.
    pub async fn wait(&self, n: usize, quiet: Duration) {
        let mut last = (0, Instant::now());
        loop {
            let c = self.count();
            if c != last.0 {
                last = (c, Instant::now());
            }
            if c >= n || last.1.elapsed() > quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a set of publishers spaces its readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// As fast as acknowledgements allow.
    FlatOut,
    /// A total rate, readings spread evenly in time: publisher `p` of `n`
    /// starts `p/n` of a period after the first, so the broker sees one
    /// reading every `1/rate` seconds.
    Spread(u64),
    /// A total rate, every publisher on the same tick: the broker sees
    /// bursts of one reading per publisher (sensors that sample on the
    /// second boundary).
    Lockstep(u64),
}

/// When a publisher's first reading goes out, and the period after it.
type Schedule = Option<(tokio::time::Instant, Duration)>;

/// Publishes `n` readings at QoS 1 on `bench/dev{p}/telemetry`, on the
/// schedule or as fast as acknowledgements allow; returns each
/// publish-to-PUBACK latency (ms).
pub async fn publisher(
    port: u16,
    p: usize,
    n: usize,
    pad: usize,
    schedule: Schedule,
) -> anyhow::Result<Vec<f64>> {
    let mut opts = MqttOptions::new(
        format!("bench-pub-{p}-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 200);
    let padding = "x".repeat(pad);
    let feeder = tokio::spawn(async move {
        let mut tick = schedule.map(|(first, period)| {
            let mut t = tokio::time::interval_at(first, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        for seq in 0..n {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            let payload = format!(
                "{{\"seq\":{seq},\"sent_us\":{},\"pad\":\"{padding}\"}}",
                now_us()
            );
            let topic = format!("bench/dev{p}/telemetry");
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent_at.insert(pkid, Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = sent_at.remove(&ack.pkid) {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok(_) => {}
            Err(e) => bail!("publisher {p}: {e}"),
        }
    }
    let client = feeder.await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    Ok(lat)
}

/// `publishers` × `messages` readings at `pace`; returns every PUBACK
/// latency and how long it took.
pub async fn publish_all(
    port: u16,
    publishers: usize,
    messages: usize,
    pad: usize,
    pace: Pace,
) -> anyhow::Result<(Vec<f64>, Duration)> {
    let start = Instant::now();
    // Paced publishers begin together once all of them had time to
    // connect, so the first period is not a burst of late starters.
    let first = tokio::time::Instant::now() + Duration::from_millis(500);
    let schedule = |p: usize| -> Schedule {
        let (rate, spread) = match pace {
            Pace::FlatOut => return None,
            Pace::Spread(rate) => (rate, true),
            Pace::Lockstep(rate) => (rate, false),
        };
        let period = Duration::from_secs_f64(publishers as f64 / rate.max(1) as f64);
        let offset = if spread {
            period.mul_f64(p as f64 / publishers as f64)
        } else {
            Duration::ZERO
        };
        Some((first + offset, period))
    };
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(tokio::spawn(publisher(port, p, messages, pad, schedule(p))));
    }
    let mut lat = Vec::with_capacity(publishers * messages);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((lat, start.elapsed()))
}

/// `n` clients that connect (MQTT 3.1.1) and stay idle. Returns their
/// sockets and how long connecting all of them took.
pub async fn idle_clients(
    port: u16,
    n: usize,
) -> anyhow::Result<(Vec<tokio::net::TcpStream>, Duration)> {
    idle_clients_after(port, n, 0, 0).await
}

/// [`idle_clients`], each of which connects with a will of `will`
/// payload bytes on a 26-byte topic (none when 0), and first publishes one
/// QoS 0 message of `big` payload bytes (none when 0) on a topic no route
/// takes.
pub async fn idle_clients_after(
    port: u16,
    n: usize,
    big: usize,
    will: usize,
) -> anyhow::Result<(Vec<tokio::net::TcpStream>, Duration)> {
    let start = Instant::now();
    // A hundred handshakes at a time: a thousand at once overflow the
    // kernel's listen backlog, and the retransmitted SYNs would measure
    // the kernel, not the broker.
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = Vec::new();
    for i in 0..n {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire_owned().await?;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let id = format!("idle-{i:06}");
            // Clean session, and a QoS 1 will when asked for.
            let flags = if will > 0 { 0x02 | 0x04 | 0x08 } else { 0x02 };
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0x02, 0x58];
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            if will > 0 {
                let topic = format!("devices/{id}/status");
                body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
                body.extend_from_slice(topic.as_bytes());
                body.extend_from_slice(&(will as u16).to_be_bytes());
                body.resize(body.len() + will, b'w');
            }
            s.write_all(&packet(0x10, &body)).await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            if ack[3] != 0 {
                bail!("client {i} refused with {:#04x}", ack[3]);
            }
            if big > 0 {
                let topic = format!("sensors/big-{i}/telemetry");
                let mut body = (topic.len() as u16).to_be_bytes().to_vec();
                body.extend_from_slice(topic.as_bytes());
                body.resize(body.len() + big, b'x');
                s.write_all(&packet(0x30, &body)).await?;
                // A PINGREQ answered: the big packet was read.
                s.write_all(&[0xC0, 0x00]).await?;
                let mut pong = [0u8; 2];
                s.read_exact(&mut pong).await?;
            }
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok((out, start.elapsed()))
}

/// A packet: its first byte, the remaining length, the body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A 3.1.1 client connected with a clean session.
async fn connect_raw(port: u16, id: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0x02, 0x58];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[3] != 0 {
        bail!("{id} refused with {:#04x}", ack[3]);
    }
    Ok(s)
}

/// Memory for subscriptions: `clients` × `each` to distinct filters.
/// Returns the RSS per subscription (bytes), and the RSS (KiB) still held
/// once 1000 of the filters got a 10 KB message and every subscriber left,
/// beyond what was held before.
pub async fn subscriptions(
    port: u16,
    pid: u32,
    clients: usize,
    each: usize,
) -> anyhow::Result<(f64, f64)> {
    use outpost::source::broker::codec::{self, Packet, Props, SubOpts, Subscribe, V311};
    let encode = |p: &Packet| {
        let mut b = bytes::BytesMut::new();
        codec::encode(p, V311, &mut b);
        b
    };
    let before = crate::procs::rss_kib(pid);
    let mut socks = Vec::new();
    for c in 0..clients {
        let mut s = connect_raw(port, &format!("subs-{c:04}")).await?;
        let filters = (0..each)
            .map(|j| (format!("subs/{c}/{j}"), Ok(SubOpts::default())))
            .collect();
        s.write_all(&encode(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters,
            props: Props::default(),
        })))
        .await?;
        // SUBACK: 2 + 2 + one code per filter.
        let mut suback = vec![0u8; 4 + each];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut suback))
            .await
            .context("SUBACK")??;
        socks.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subscribed = crate::procs::rss_kib(pid);
    let per_sub = subscribed.saturating_sub(before) as f64 * 1024.0 / (clients * each) as f64;
    let mut p = connect_raw(port, "subs-pub").await?;
    let big = bytes::Bytes::from(vec![b'x'; 10_000]);
    for c in 0..10.min(clients) {
        for j in 0..100.min(each) {
            p.write_all(&encode(&Packet::Publish(codec::Publish {
                dup: false,
                qos: 0,
                retain: false,
                topic: format!("subs/{c}/{j}"),
                pkid: 0,
                payload: big.clone(),
                props: Props::default(),
            })))
            .await?;
        }
    }
    // The subscribers read what came, then everyone leaves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &mut socks {
        let mut sink = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut sink)).await
        {
            if n == 0 {
                break;
            }
        }
    }
    drop(socks);
    drop(p);
    // Long enough for a broker's housekeeping to run.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let left = crate::procs::rss_kib(pid);
    Ok((per_sub, left.saturating_sub(before) as f64 * 1.024))
}

/// The readings of one upstream payload: outpost's envelope, an array of
/// envelopes (`format = "batch"`), or the sensor's own payload.
fn readings(v: serde_json::Value) -> Vec<serde_json::Value> {
    let unwrap = |mut e: serde_json::Value| match e.get_mut("values") {
        Some(values) => values.take(),
        None => e,
    };
    match v {
        serde_json::Value::Array(items) => items.into_iter().map(unwrap).collect(),
        one => vec![unwrap(one)],
    }
}
