//! A small control endpoint for a technician on the box: a unix socket
//! that answers one request per connection and closes. `outpost status`
//! asks for the snapshot (connection state, queue depths, counters);
//! `outpost dead-letters --retry/--purge` asks the running daemon to act,
//! so its writer stays the only one and its counters stay right.
//!
//! Finding it: the packaged service's socket is in `/run/outpost`; any
//! other daemon also leaves a note with its socket's absolute path in a
//! per-user runtime directory, so `outpost status` finds it from any
//! directory, not only where it was started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::control::status::StatusSource;
use crate::store::{DeadOp, Outbox, Pick};

/// Where the socket lives: systemd's `RuntimeDirectory` (`/run/outpost`)
/// when it gave us one, else the state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    let p = match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(dir) => PathBuf::from(dir).join("status.sock"),
        None => state_dir.join("status.sock"),
    };
    std::path::absolute(&p).unwrap_or(p)
}

/// The per-user directory of notes (`<pid>` → socket path).
fn notes_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("outpost-{}", nix::unistd::getuid())));
    base.join("outpost")
}

/// Running daemons' sockets, from the notes (stale notes are removed).
pub fn running() -> Vec<PathBuf> {
    let dir = notes_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let pid: Option<i32> = e.file_name().to_str().and_then(|n| n.parse().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        let socket = std::fs::read_to_string(e.path()).ok().map(PathBuf::from);
        match socket {
            Some(s) if alive && s.exists() => out.push(s),
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Where `outpost status` looks: the packaged service's socket, else the
/// one of the config's state directory (that one first when the config
/// was given), else the one running daemon the notes know of. An error
/// lists what was tried.
pub fn find_socket(state_dir: &Path, explicit_config: bool) -> Result<PathBuf, String> {
    let packaged = Path::new("/run/outpost/status.sock");
    let own = socket_path(state_dir);
    // With --config, the daemon of that config's state directory first;
    // the packaged service (whose socket is in its runtime directory)
    // next.
    if explicit_config && own.exists() {
        return Ok(own);
    }
    if packaged.exists() {
        return Ok(packaged.to_path_buf());
    }
    if own.exists() || explicit_config {
        return Ok(own);
    }
    match running().as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no running outpost found (tried {} and {}); is it running? Give --config FILE for one started with a config of its own",
            packaged.display(),
            own.display()
        )),
        many => Err(format!(
            "{} outposts are running; say which with --config FILE: {}",
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One request to the daemon, one answer.
pub fn ask(socket: &Path, request: &Value) -> Result<Value, String> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "not allowed to talk to outpost at {} ({e}): the socket is open to group outpost; \
                 add yourself with `sudo adduser $USER outpost` and log in again (or use sudo)",
                socket.display()
            )
        } else {
            format!(
                "cannot reach outpost at {} ({e}); is it running with this config?",
                socket.display()
            )
        }
    })?;
    let timeout = Some(Duration::from_secs(10));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    let mut line = request.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.shutdown(std::net::Shutdown::Write))
        .map_err(|e| format!("cannot ask outpost at {}: {e}", socket.display()))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .map_err(|e| format!("no answer from outpost at {}: {e}", socket.display()))?;
    serde_json::from_str(&body).map_err(|e| format!("unreadable answer from outpost: {e}"))
}

/// The answer to one request line.
async fn answer(line: &str, status: &StatusSource, outbox: &Outbox) -> Value {
    let req: Value = if line.trim().is_empty() {
        json!({"op": "status"})
    } else {
        match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return json!({"error": format!("not a JSON request: {e}")}),
        }
    };
    let op = match req.get("op").and_then(Value::as_str) {
        Some("status") => return status.snapshot(),
        Some("retry") => DeadOp::Retry,
        Some("purge") => DeadOp::Purge,
        _ => return json!({"error": "op must be status, retry or purge"}),
    };
    let all = req.get("all") == Some(&Value::Bool(true));
    let pick = match (req.get("id"), all) {
        (_, true) => Pick::All,
        (Some(Value::Number(n)), false) => match n.as_i64() {
            Some(id) => Pick::One(id),
            None => return json!({"error": "id must be a whole number"}),
        },
        _ => return json!({"error": "give an id or all"}),
    };
    match outbox.dead_letters_act(op, pick).await {
        Ok(done) => {
            tracing::info!(op = ?op, pick = ?pick, done = done.done, kept = done.kept.len(), "dead letters changed by `outpost dead-letters`");
            json!({"done": done.done, "kept": done.kept})
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

pub async fn serve(
    path: PathBuf,
    status: StatusSource,
    outbox: Outbox,
    shutdown: CancellationToken,
) {
    // A socket left by a killed process is stale: nobody else owns it.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no status socket (outpost status will not work)");
            return;
        }
    };
    // Connecting takes write permission on the socket: the service's group
    // (`outpost`, where the README puts the people who run the box) gets it.
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the status socket to the service's group");
        }
    }
    let note = notes_dir().join(std::process::id().to_string());
    let noted = std::fs::create_dir_all(note.parent().unwrap_or(Path::new("/")))
        .and_then(|_| std::fs::write(&note, path.as_os_str().as_encoded_bytes()));
    if let Err(e) = noted {
        tracing::debug!(error = %e, "cannot note the status socket for `outpost status`");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (status, outbox) = (status.clone(), outbox.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    let mut reader = BufReader::new(read.take(64 << 10));
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await;
                    let mut body = serde_json::to_vec_pretty(&answer(&line, &status, &outbox).await).unwrap_or_default();
                    body.push(b'\n');
                    let _ = write.write_all(&body).await;
                    let _ = write.shutdown().await;
                });
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&note);
}
