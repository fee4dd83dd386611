//! Is the pipeline alive? The watchdog asks this before every ping, so a
//! wedged part leads systemd to restart outpost instead of leaving a box that
//! accepts connections but moves no data.
//!
//! Three parts are checked, each within the same deadline:
//! - the **outbox writer** answers a round trip (a stuck disk or a held
//!   SQLite lock fails this);
//! - the **topic router** used by the ingest front can be locked (a
//!   poisoned lock, or one held forever, fails this);
//! - the **local broker's router** (rumqttd's router thread) answers a
//!   CONNECT with a CONNACK on its loopback port. rumqttd writes CONNACK only
//!   after its router has registered the connection, so this is a real
//!   round trip through the thread every sensor publish goes through.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::route::Router;
use crate::source::broker::LocalBroker;
use crate::store::Outbox;

/// Which part failed, and how.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unhealthy {
    #[error("the outbox writer did not answer within {0:?}")]
    Outbox(Duration),
    #[error("the outbox writer failed: {0}")]
    OutboxFailed(String),
    #[error("the topic router stayed locked for {0:?}")]
    RouterWedged(Duration),
    #[error("the topic router's lock is poisoned (a panic while routing)")]
    RouterPoisoned,
    #[error("the local broker did not answer CONNECT with CONNACK within {0:?}")]
    BrokerSilent(Duration),
    #[error("the local broker's health probe failed: {0}")]
    BrokerProbe(String),
}

/// What the watchdog checks.
#[derive(Clone)]
pub struct Health {
    pub outbox: Outbox,
    /// The ingest front's router (absent in link mode, where the router is
    /// owned by the link thread and covered by the broker probe).
    pub router: Option<Arc<Mutex<Router>>>,
    pub broker: Option<LocalBroker>,
}

impl Health {
    /// Checks every part; the first failure is returned.
    pub async fn check(&self, within: Duration) -> Result<(), Unhealthy> {
        match tokio::time::timeout(within, self.outbox.last_id("")).await {
            Err(_) => return Err(Unhealthy::Outbox(within)),
            Ok(Err(e)) => return Err(Unhealthy::OutboxFailed(e.to_string())),
            Ok(Ok(_)) => {}
        }
        if let Some(router) = &self.router {
            router_lockable(router, within).await?;
        }
        if let Some(broker) = &self.broker {
            broker_answers(broker, within).await?;
        }
        Ok(())
    }
}

/// Tries the lock without blocking a thread on it, until `within` passes.
async fn router_lockable(router: &Mutex<Router>, within: Duration) -> Result<(), Unhealthy> {
    let deadline = Instant::now() + within;
    loop {
        // The guard (if any) is dropped at the end of this statement, before
        // any await.
        let outcome = match router.try_lock() {
            Ok(_) => Some(Ok(())),
            Err(TryLockError::Poisoned(_)) => Some(Err(Unhealthy::RouterPoisoned)),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => {
                Some(Err(Unhealthy::RouterWedged(within)))
            }
            Err(TryLockError::WouldBlock) => None,
        };
        match outcome {
            Some(result) => return result,
            None => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// CONNECT (MQTT 3.1.1, clean session) with outpost's control login under
/// a probe client id, then CONNACK, then DISCONNECT.
async fn broker_answers(broker: &LocalBroker, within: Duration) -> Result<(), Unhealthy> {
    let addr: SocketAddr = broker.dial_addr();
    let client_id = format!("{}-health", broker.login.client_id);
    let login = broker.authenticate.then_some((
        broker.login.username.as_str(),
        broker.login.password.as_str(),
    ));
    let connect = connect_packet(&client_id, login);
    let probe = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&connect).await?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await?;
        let _ = stream.write_all(&[0xE0, 0x00]).await;
        Ok::<_, std::io::Error>(ack)
    };
    match tokio::time::timeout(within, probe).await {
        Err(_) => Err(Unhealthy::BrokerSilent(within)),
        Ok(Err(e)) => Err(Unhealthy::BrokerProbe(format!("{addr}: {e}"))),
        Ok(Ok([0x20, 0x02, _, 0x00])) => Ok(()),
        Ok(Ok(other)) => Err(Unhealthy::BrokerProbe(format!(
            "{addr}: expected CONNACK accepted, got bytes {other:02x?}"
        ))),
    }
}

fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    let mut flags = 0x02; // clean session
    if login.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&10u16.to_be_bytes()); // keep-alive, seconds
    string(&mut body, client_id);
    if let Some((user, pass)) = login {
        string(&mut body, user);
        string(&mut body, pass);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerConfig, FullPolicy, StoreConfig, Synchronous};
    use crate::source::broker::{self, ControlLogin, Listeners};
    use crate::units::{ByteSize, Seconds};

    fn outbox(dir: &std::path::Path) -> Outbox {
        let cfg = StoreConfig {
            path: "o.db".into(),
            max_bytes: ByteSize(1 << 20),
            max_age: Seconds(Duration::from_secs(3600)),
            full_policy: FullPolicy::DropOldest,
            synchronous: Synchronous::Normal,
        };
        let (outbox, _writer) = Outbox::open(dir.join("o.db"), &cfg, &["up".into()]).expect("open");
        outbox
    }

    fn login() -> ControlLogin {
        ControlLogin {
            client_id: "outpost-control-test".into(),
            username: "u".into(),
            password: "p".into(),
        }
    }

    #[tokio::test]
    async fn a_held_router_lock_is_unhealthy_and_a_free_one_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Arc::new(Mutex::new(Router::new(&[]).expect("router")));
        let health = Health {
            outbox: outbox(dir.path()),
            router: Some(router.clone()),
            broker: None,
        };
        assert_eq!(health.check(Duration::from_millis(200)).await, Ok(()));
        // A routing thread that takes the lock and never lets go.
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let r = router.clone();
        let wedged = std::thread::spawn(move || {
            let _guard = r.lock().expect("lock");
            let _ = locked_tx.send(());
            let _ = released.recv();
        });
        locked.recv().expect("the thread holds the lock");
        assert_eq!(
            health.check(Duration::from_millis(200)).await,
            Err(Unhealthy::RouterWedged(Duration::from_millis(200)))
        );
        drop(release);
        wedged.join().expect("join");
        assert_eq!(health.check(Duration::from_millis(200)).await, Ok(()));
    }

    #[tokio::test]
    async fn a_poisoned_router_lock_is_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let router = Arc::new(Mutex::new(Router::new(&[]).expect("router")));
        let r = router.clone();
        let _ = std::thread::spawn(move || {
            let _guard = r.lock().expect("lock");
            panic!("a panic while routing");
        })
        .join();
        let health = Health {
            outbox: outbox(dir.path()),
            router: Some(router),
            broker: None,
        };
        assert_eq!(
            health.check(Duration::from_millis(200)).await,
            Err(Unhealthy::RouterPoisoned)
        );
    }

    #[tokio::test]
    async fn a_broker_that_accepts_but_never_acknowledges_is_unhealthy() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Accepts connections and reads, but never writes: a wedged router.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let health = Health {
            outbox: outbox(dir.path()),
            router: None,
            broker: Some(LocalBroker {
                addr,
                login: login(),
                authenticate: false,
            }),
        };
        assert_eq!(
            health.check(Duration::from_millis(300)).await,
            Err(Unhealthy::BrokerSilent(Duration::from_millis(300)))
        );
        held.abort();
    }

    #[tokio::test]
    async fn the_embedded_broker_answers_the_probe_with_and_without_logins() {
        for users in [None, Some([("alice".to_string(), "pw".to_string())].into())] {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = BrokerConfig {
                users,
                ..BrokerConfig::default()
            };
            let started = broker::start(&cfg, Listeners::private().expect("ports")).expect("start");
            let local = LocalBroker {
                addr: started.listen.v4,
                login: started.control.clone(),
                authenticate: cfg.users.is_some(),
            };
            let health = Health {
                outbox: outbox(dir.path()),
                router: None,
                broker: Some(local.clone()),
            };
            assert_eq!(health.check(Duration::from_secs(5)).await, Ok(()));
            if cfg.users.is_some() {
                // A wrong password is refused, and the probe says so.
                let wrong = LocalBroker {
                    login: ControlLogin {
                        password: "wrong".into(),
                        ..local.login.clone()
                    },
                    ..local
                };
                let health = Health {
                    broker: Some(wrong),
                    ..health
                };
                assert!(
                    health.check(Duration::from_secs(5)).await.is_err(),
                    "a refused login must not count as healthy"
                );
            }
        }
    }
}
