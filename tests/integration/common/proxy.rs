//! A TCP proxy between outpost and the upstream broker that reads the
//! broker's MQTT packets and can withhold its PUBACKs (a cloud that keeps
//! the connection, answers pings, and stops acknowledging).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct AckProxy {
    pub port: u16,
    withhold: Arc<AtomicBool>,
    /// PUBACKs dropped so far.
    pub dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AckProxy {
    /// Listens on a free loopback port and forwards to `upstream_port`.
    pub async fn start(upstream_port: u16) -> AckProxy {
        let port = super::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the proxy");
        let withhold = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (withhold, dropped) = (withhold.clone(), dropped.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        continue;
                    };
                    tokio::spawn(pipe(client, server, withhold.clone(), dropped.clone()));
                }
            }
        });
        AckProxy {
            port,
            withhold,
            dropped,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Drops (true) or forwards (false) the broker's PUBACKs from now on.
    pub fn withhold(&self, on: bool) {
        self.withhold.store(on, Ordering::SeqCst);
    }
}

impl Drop for AckProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    withhold: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    // Broker to client, packet by packet.
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    'outer: loop {
        let n = match sr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(len) = packet_len(&buf) {
            let packet: Vec<u8> = buf.drain(..len).collect();
            if packet[0] >> 4 == 4 && withhold.load(Ordering::SeqCst) {
                dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            if cw.write_all(&packet).await.is_err() {
                break 'outer;
            }
        }
    }
    let _ = cw.shutdown().await;
    up.abort();
}

/// The length of the first whole packet in `buf`, if it holds one.
fn packet_len(buf: &[u8]) -> Option<usize> {
    packet_len_header(buf).map(|(_, total)| total)
}

/// The fixed header's length and the whole length of the first packet in
/// `buf`, if it holds a whole one.
pub(super) fn packet_len_header(buf: &[u8]) -> Option<(usize, usize)> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + remaining;
            return (buf.len() >= total).then_some((2 + i, total));
        }
    }
    None
}
