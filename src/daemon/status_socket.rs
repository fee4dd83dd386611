//! A small status endpoint for a technician on the box: a unix socket that
//! answers every connection with one JSON snapshot (connection state, queue
//! depths, counters) and closes. `outpost status` reads it.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::control::status::StatusSource;

/// Where the socket lives: systemd's `RuntimeDirectory` (`/run/outpost`)
/// when it gave us one, else the state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(dir) => PathBuf::from(dir).join("status.sock"),
        None => state_dir.join("status.sock"),
    }
}

/// Where `outpost status` looks: the runtime directory of the packaged
/// service if it has a socket there, else the state directory.
pub fn find_socket(state_dir: &Path) -> PathBuf {
    let packaged = Path::new("/run/outpost/status.sock");
    if packaged.exists() {
        packaged.to_path_buf()
    } else {
        socket_path(state_dir)
    }
}

pub async fn serve(path: PathBuf, status: StatusSource, shutdown: CancellationToken) {
    // A socket left by a killed process is stale: nobody else owns it.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no status socket (outpost status will not work)");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((mut stream, _)) = accepted {
                    let mut body = serde_json::to_vec_pretty(&status.snapshot()).unwrap_or_default();
                    body.push(b'\n');
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}
