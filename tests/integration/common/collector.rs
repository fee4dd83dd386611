//! A persistent-session subscriber on the upstream broker, and what the
//! tests check about what it saw.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A message seen by the collector.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    /// When the collector received it.
    pub at: Instant,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("upstream payload is JSON")
    }
}

/// A QoS 1, persistent-session subscriber on the upstream broker.
pub struct Collector {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(port: u16, filter: &str) -> Collector {
        let mut opts = MqttOptions::new(
            format!("collector-{}", fastrand::u64(..)),
            "127.0.0.1",
            port,
        );
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let filter = filter.to_string();
        let (subscribed, mut on_subscribed) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut s) = sink.lock() {
                            s.push(Seen {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                at: Instant::now(),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), on_subscribed.recv())
            .await
            .expect("collector subscribed within 10s");
        Collector { seen, task }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages arrived; returns how many did.
    pub async fn wait_for(&self, n: usize, within: Duration) -> usize {
        let until = Instant::now() + within;
        while self.count() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.count()
    }

    /// Waits until no new message has arrived for `quiet`.
    pub async fn settle(&self, quiet: Duration, within: Duration) {
        let until = Instant::now() + within;
        let mut last = self.count();
        let mut since = Instant::now();
        while Instant::now() < until && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.count();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What arrived upstream, per device: the sequence numbers in arrival order
/// (from envelopes, or arrays of them with `format = "batch"`).
pub fn arrivals(seen: &[Seen]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in seen {
        let v = s.json();
        let envelopes = match v {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for e in envelopes {
            let dev = e["device"].as_str().unwrap_or_default().to_string();
            let seq = e["values"]["seq"]
                .as_u64()
                .expect("seq in upstream payload");
            out.entry(dev).or_default().push(seq);
        }
    }
    out
}

/// Checks that every device's readings 0..count arrived, and that the order
/// of first arrivals is the order of publishing. Returns the duplicate count.
pub fn assert_complete_and_ordered(seen: &[Seen], devices: usize, count: usize) -> usize {
    let got = arrivals(seen);
    let mut duplicates = 0;
    for d in 0..devices {
        let dev = format!("dev-{d}");
        let seqs = got.get(&dev).cloned().unwrap_or_default();
        let mut firsts = Vec::new();
        let mut set = HashSet::new();
        for s in &seqs {
            if set.insert(*s) {
                firsts.push(*s);
            } else {
                duplicates += 1;
            }
        }
        let missing: Vec<u64> = (0..count as u64).filter(|s| !set.contains(s)).collect();
        assert!(
            missing.is_empty(),
            "{dev}: {} of {count} readings missing upstream, first few: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{dev}: readings arrived out of order"
        );
    }
    duplicates
}

/// The sequence without repeats, each value at its first arrival.
pub fn first_arrivals(seqs: &[u64]) -> Vec<u64> {
    let mut set = HashSet::new();
    seqs.iter().copied().filter(|s| set.insert(*s)).collect()
}
