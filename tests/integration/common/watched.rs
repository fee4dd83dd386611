//! An outpost watched from both sides: a collector on the upstream broker
//! sees what it forwards, and a canary (an MQTT 3.1.1 and an MQTT 5 sensor)
//! proves after each hostile case that it still serves everyone else.

use std::time::Duration;

use outpost::source::broker::codec::{Props, V311, V5};

use super::{wait_until, Collector, Hello, Outpost, Raw, World};

/// outpost's memory bound while it is watched.
pub const RSS_BOUND_KIB: u64 = 64 * 1024;

pub struct Watched {
    pub w: World,
    pub col: Collector,
    pub op: Outpost,
    canaries: usize,
}

impl Watched {
    /// The default test config with `broker_extra` lines in `[broker]`.
    pub async fn broker(broker_extra: &str) -> Watched {
        Watched::broker_with_env(broker_extra, &[]).await
    }

    pub async fn broker_with_env(broker_extra: &str, env: &[(&str, &str)]) -> Watched {
        let w = World::new("");
        let text = w
            .site()
            .mqtt("", "")
            .replace("[broker]\n", &format!("[broker]\n{broker_extra}\n"));
        Watched::start(w, &text, env).await
    }

    /// outpost on `config` (which must route `sensors/+/telemetry` to an
    /// upstream topic under `site1/`) in world `w`.
    pub async fn start(w: World, config: &str, env: &[(&str, &str)]) -> Watched {
        let col = w.collect("site1/#").await;
        let op = w.start_with_env(config, env);
        Watched {
            w,
            col,
            op,
            canaries: 0,
        }
    }

    pub fn broker_status(&self) -> serde_json::Value {
        self.op.status_json()["broker"].clone()
    }

    /// A 3.1.1 and an MQTT 5 sensor connect, publish at QoS 1, get their
    /// PUBACK, and both readings arrive upstream within `within`; the
    /// broker needed no restart; memory is bounded.
    pub async fn canary_within(&mut self, within: Duration) {
        self.canaries += 1;
        let n = self.canaries;
        for level in [V311, V5] {
            let device = format!("canary{level}-{n}");
            let (mut c, _) = Raw::connected(self.w.port, &Hello::new(level, &device)).await;
            let code = c
                .publish(
                    &format!("sensors/{device}/telemetry"),
                    format!("{{\"canary\":{n}}}").as_bytes(),
                    1,
                    false,
                    Props::default(),
                )
                .await;
            assert_eq!(code, Ok(0), "canary {device}: PUBACK");
            c.disconnect().await;
            let arrived = wait_until(within, || {
                self.col.all().iter().any(|s| s.topic.contains(&device))
            });
            assert!(
                arrived,
                "canary {device} did not arrive upstream within {within:?}:\n{}",
                self.op.log_text()
            );
        }
        assert!(self.op.alive(), "outpost exited:\n{}", self.op.log_text());
        let b = self.broker_status();
        assert_eq!(b["restarts"], 0, "the broker needed a restart: {b}");
        let rss = self.op.rss_kib();
        assert!(rss < RSS_BOUND_KIB, "outpost uses {rss} KiB");
    }

    /// [`Watched::canary_within`] 10 s.
    pub async fn canary(&mut self) {
        self.canary_within(Duration::from_secs(10)).await
    }

    /// No reading of `device` reached upstream.
    pub fn never_arrived(&self, device: &str) {
        let seen: Vec<String> = self
            .col
            .all()
            .iter()
            .filter(|s| s.topic.contains(device))
            .map(|s| s.topic.clone())
            .collect();
        assert!(
            seen.is_empty(),
            "{device} was stored and forwarded: {seen:?}"
        );
    }
}
