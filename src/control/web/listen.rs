//! The HTTP server's connections, bounded: at most [`MAX_CONNECTIONS`] at
//! once and [`MAX_PER_ADDRESS`] from one address (more are closed as they
//! come), each closed after [`IDLE`] without a byte from the client. A LAN
//! that opens requests and never finishes them cannot use up the process's
//! descriptors, and running out of descriptors is logged once a minute,
//! not per attempt.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::source::broker::pending::{Pending, Ticket};
use crate::throttle::Throttle;

/// HTTP connections at once.
pub const MAX_CONNECTIONS: usize = 64;
/// HTTP connections at once from one address.
pub const MAX_PER_ADDRESS: usize = 16;
/// A connection that sends nothing for this long is closed.
pub const IDLE: Duration = Duration::from_secs(15);

/// The listener handed to axum.
pub struct Bounded {
    socket: TcpListener,
    places: Pending,
    logs: Throttle,
}

impl Bounded {
    pub fn new(socket: TcpListener) -> Bounded {
        Bounded {
            socket,
            places: Pending::new(MAX_CONNECTIONS, MAX_PER_ADDRESS),
            logs: Throttle::default(),
        }
    }

    fn note(&mut self, key: &str, why: &str) {
        if let Some(n) = self.logs.due(key) {
            tracing::warn!(reason = %why, count = n, "HTTP connections closed as they came: {why} ({n} in the last minute)");
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Timed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Timed, SocketAddr) {
        loop {
            match self.socket.accept().await {
                Ok((stream, peer)) => match self.places.take(peer.ip()) {
                    Ok(ticket) => return (Timed::new(stream, ticket), peer),
                    Err(_) => {
                        drop(stream);
                        let why = format!(
                            "{peer} or the LAN has too many open (at most {MAX_PER_ADDRESS} per address, {MAX_CONNECTIONS} in all)"
                        );
                        self.note("full", &why);
                    }
                },
                Err(e) => {
                    let key = if crate::source::broker::out_of_descriptors(&e) {
                        "descriptors"
                    } else {
                        "accept"
                    };
                    self.note(key, &format!("cannot accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// A connection that ends after [`IDLE`] without a byte read, and gives
/// its place back when it ends.
pub struct Timed {
    io: TcpStream,
    idle: Pin<Box<Sleep>>,
    _place: Ticket,
}

impl Timed {
    fn new(io: TcpStream, place: Ticket) -> Timed {
        Timed {
            io,
            idle: Box::pin(tokio::time::sleep(IDLE)),
            _place: place,
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.idle.as_mut().reset(crate::units::deadline(IDLE));
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no bytes from the client within the idle time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
