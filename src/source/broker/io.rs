//! A client connection's bytes: whole packets in, batches of packets out.
//!
//! Buffers start empty and grow only for the packet at hand, and are given
//! back once drained, so an idle connection holds no buffer at all, and
//! never one sized by `max_payload`. A peer that stops reading
//! cannot hold a connection forever: a write that makes no progress for
//! [`WRITE_TIMEOUT`] ends it.

use std::time::Duration;

use std::future::Future;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, CodecError};

/// A client's stream. `ready` waits until a read would make progress
/// without a buffer being held meanwhile, which is what keeps an idle
/// plain-TCP client cheap (TLS keeps buffers of its own anyway).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Stream for TcpStream {
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.readable()
    }
}

impl Stream for rumqttc::tokio_rustls::server::TlsStream<TcpStream> {
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// A write to a client that does not read for this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Read in steps of at least this much.
const READ_STEP: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("the client stopped reading (no write progress for {}s)", WRITE_TIMEOUT.as_secs())]
    WriteStalled,
}

pub struct Conn<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Largest packet body accepted from the peer.
    pub max_body: usize,
}

impl<S: Stream> Conn<S> {
    pub fn new(stream: S, max_body: usize) -> Conn<S> {
        Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_body,
        }
    }

    /// A whole packet already buffered, if any.
    pub fn buffered(&mut self) -> Result<Option<Bytes>, CodecError> {
        codec::split_frame(&mut self.rbuf, self.max_body)
    }

    /// Reads more bytes. `Ok(false)`: the peer closed. Cancel-safe: no
    /// bytes are lost if the future is dropped.
    pub async fn fill(&mut self) -> Result<bool, IoError> {
        if self.rbuf.is_empty() {
            // Idle between packets: no buffer is held while waiting.
            if self.rbuf.capacity() > 0 {
                self.rbuf = BytesMut::new();
            }
            self.stream.ready().await?;
        }
        if self.rbuf.capacity().saturating_sub(self.rbuf.len()) < READ_STEP {
            self.rbuf.reserve(READ_STEP);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        Ok(n > 0)
    }

    /// The next whole packet; `None`: the peer closed.
    pub async fn next(&mut self) -> Result<Option<Bytes>, IoError> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Queues a packet for [`Conn::flush`].
    pub fn queue(&mut self, p: &codec::Packet, level: u8) {
        codec::encode(p, level, &mut self.wbuf);
    }

    /// Queues bytes already encoded.
    pub fn queue_raw(&mut self, b: &[u8]) {
        self.wbuf.extend_from_slice(b);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), IoError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r?,
            Err(_) => return Err(IoError::WriteStalled),
        }
        // Written out: nothing is held for an idle client.
        self.wbuf = BytesMut::new();
        Ok(())
    }

    /// Writes `p` at once.
    pub async fn send(&mut self, p: &codec::Packet, level: u8) -> Result<(), IoError> {
        self.queue(p, level);
        self.flush().await
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}
