//! One client connection, from CONNECT to the end.
//!
//! Nothing a client sends is routed, stored or relayed before its CONNECT
//! has been accepted: the CONNECT is read, checked and answered first, and
//! bytes that came after it wait in the socket. Every later packet is
//! decoded strictly and checked (topic names, aliases, packet ids, the
//! receive maximum) before it has any effect; a violation ends the
//! connection (MQTT 5: with the DISCONNECT reason code that says why) and
//! nothing of that packet is kept.
//!
//! A PUBLISH that a route selects is handed to the outbox, and its PUBACK
//! (PUBREC for QoS 2) is held until the commit, released in the order the
//! PUBLISHes came. A QoS 2 packet id is recorded in the same transaction,
//! so a resend of an unreleased id is never stored twice, even after a
//! crash.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod client;
mod publish;

use super::codec::props::{self, Value};
use super::codec::{self, CodecError, ConnAck, Connect, Packet, Props, V311, V5};
use super::core::Join;
use super::gate::AckGate;
use super::io::{Conn, Stream};
use super::pending::Ticket;
use super::session::PendingWill;
use super::Inner;

use client::{Client, Seen};
pub use publish::message;

/// Topic aliases a client may use (announced in CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 10;

/// QoS 1 and 2 PUBLISHes a client may have unacknowledged (announced to
/// MQTT 5 clients as the receive maximum; a 3.1.1 client that goes beyond
/// is simply not read until acknowledgements go out).
pub const RECEIVE_MAX: u16 = 100;

/// Serves one accepted connection until it ends. `identity`: the client
/// certificate's CN, on a TLS listener that takes it as the username;
/// `waiting`: its place among the connections waiting for a CONNECT.
///
/// The CONNECT and its checks run once, and so does the end: their futures
/// live on the heap only while they run. What an idle client's task keeps
/// is the connection, the client and the loop that serves it (about 1 KB;
/// an `async fn` holding all three phases was twice that, its arguments
/// kept for the connection's whole life).
pub fn run<S>(
    stream: S,
    peer: SocketAddr,
    identity: Option<String>,
    inner: Arc<Inner>,
    stop: CancellationToken,
    waiting: Ticket,
) -> impl Future<Output = ()> + Send
where
    S: Stream,
{
    let opening = Box::pin(open(stream, peer, identity, inner, stop, waiting));
    async move {
        let Some((mut conn, mut client)) = opening.await else {
            return;
        };
        let end = client.serve(&mut conn).await;
        Box::pin(async move {
            client.finish(&mut conn, end).await;
            conn.close().await;
        })
        .await;
    }
}

/// Reads, checks and answers the CONNECT; `None`: the connection ended
/// (refused, broken or silent), already closed.
async fn open<S: Stream>(
    stream: S,
    peer: SocketAddr,
    identity: Option<String>,
    inner: Arc<Inner>,
    stop: CancellationToken,
    waiting: Ticket,
) -> Option<(Conn<S>, Client)> {
    let mut conn = Conn::new(stream, inner.settings.max_body);
    let first = tokio::time::timeout(inner.settings.connect_timeout, conn.next()).await;
    // The CONNECT is in (or never came): no longer waiting for it.
    drop(waiting);
    let first = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            return None;
        }
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            inner.note_violation(peer, "?", &e.to_string());
            return None;
        }
    };
    let connect = match codec::decode_connect(&first) {
        Ok(c) => c,
        Err(CodecError::Version(level)) => {
            // 3.1.1's answer to a protocol it does not know (0x01).
            let refuse = Packet::ConnAck(ConnAck {
                session_present: false,
                code: 0x01,
                props: Props::default(),
            });
            let _ = conn.send(&refuse, V311).await;
            inner.note_violation(peer, "?", &format!("unsupported protocol level {level}"));
            conn.close().await;
            return None;
        }
        Err(e) => {
            if claimed_level(&first) == V5 {
                let _ = conn.send(&connack(e.reason(), Props::default()), V5).await;
            }
            inner.note_violation(peer, "?", &e.to_string());
            conn.close().await;
            return None;
        }
    };
    match accept(&mut conn, connect, peer, identity, &inner, stop).await {
        Some(client) => Some((conn, client)),
        None => {
            conn.close().await;
            None
        }
    }
}

/// The protocol level a CONNECT says it is, even when it is broken.
fn claimed_level(frame: &[u8]) -> u8 {
    // fixed header (2..5 bytes), then a 2-byte length and the name.
    let header = frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(2, |p| p.saturating_add(2));
    let name_len = match frame.get(header..header.saturating_add(2)) {
        Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => 0,
    };
    frame
        .get(header.saturating_add(2).saturating_add(name_len))
        .copied()
        .unwrap_or(V311)
}

fn connack(code: u8, props: Props) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        props,
    })
}

/// Refuses a CONNECT with the right code for the client's version.
async fn refuse<S: Stream>(conn: &mut Conn<S>, level: u8, code_311: u8, code_5: u8) {
    let code = if level == V5 { code_5 } else { code_311 };
    let _ = conn.send(&connack(code, Props::default()), level).await;
}

/// Checks a CONNECT and answers it; `None`: refused (already answered).
async fn accept<S: Stream>(
    conn: &mut Conn<S>,
    c: Connect,
    peer: SocketAddr,
    identity: Option<String>,
    inner: &Arc<Inner>,
    stop: CancellationToken,
) -> Option<Client> {
    let level = c.level;
    let v5 = level == V5;
    inner.fault_hook(&c.client_id);
    let internal = inner.is_internal(&c);
    let username = if internal {
        c.username.clone()
    } else {
        let login = inner.auth().login(
            c.username.as_deref(),
            c.password.as_deref(),
            identity.as_deref(),
        );
        match login {
            Ok(u) => u,
            Err(why) => {
                // As Mosquitto: not authorized (3.1.1 0x05, MQTT 5 0x87).
                inner.note_refused(peer, &c.client_id, why.reason());
                refuse(conn, level, 0x05, 0x87).await;
                return None;
            }
        }
    };
    let username: Option<Arc<str>> = username.map(|u| Arc::from(u.as_str()));
    if v5 && c.props.has(props::AUTH_METHOD) {
        refuse(conn, level, 0x05, 0x8C).await;
        return None;
    }
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        if !v5 && !c.clean {
            // 3.1.1: a zero-length id needs a clean session.
            refuse(conn, level, 0x02, 0x85).await;
            return None;
        }
        let id = format!("outpost-{:016x}", fastrand::u64(..));
        assigned = Some(id.clone());
        Arc::from(id.as_str())
    } else {
        Arc::from(c.client_id.as_str())
    };
    if let Some(w) = &c.will {
        if !codec::valid_topic_name(&w.topic) {
            inner.note_violation(peer, &client_id, "a will topic that is not a topic name");
            refuse(conn, level, 0x02, 0x90).await;
            return None;
        }
    }
    let owner = super::core::Owner::of(username.as_ref(), peer.ip());
    let slot = if internal {
        None
    } else {
        match inner.take_slot(&owner) {
            Some(s) => Some(s),
            None => {
                inner.note_refused(peer, &client_id, "max_connections reached");
                refuse(conn, level, 0x03, 0x97).await;
                return None;
            }
        }
    };
    let limits = inner.limits();
    let expiry = if v5 {
        match c.props.u32(props::SESSION_EXPIRY) {
            None | Some(0) => None,
            Some(n) => Some(Duration::from_secs(u64::from(n)).min(limits.persistent_expiry)),
        }
    } else if !c.clean {
        Some(limits.persistent_expiry)
    } else {
        None
    };
    let will = c.will.clone().map(|will| PendingWill {
        delay: Duration::from_secs(u64::from(will.props.u32(props::WILL_DELAY).unwrap_or(0)))
            .min(limits.persistent_expiry),
        will,
    });
    let joined = inner.core().join(Join {
        client_id: client_id.clone(),
        level,
        clean: c.clean,
        expiry,
        receive_max: if v5 {
            c.props.u16(props::RECEIVE_MAX).unwrap_or(u16::MAX)
        } else {
            limits.max_inflight
        },
        max_packet: if v5 {
            c.props.u32(props::MAX_PACKET_SIZE)
        } else {
            None
        },
        will,
        username: username.clone(),
        owner,
        keep_alive: Duration::from_secs(u64::from(c.keep_alive)),
    });
    if let Some(t) = joined.taken_will {
        inner.publish_will(client_id.clone(), t.username, t.conn_id, t.will);
    }
    // QoS 2 ids this client left unreleased before (also across a crash).
    let outbox = inner.ingest.outbox();
    let mut seen = None;
    if c.clean {
        let _ = outbox.qos2_forget(&client_id).await;
    } else if let Ok(ids) = outbox.qos2_pending(&client_id).await {
        inner.core().qos2_restore(&client_id, &ids);
        if !ids.is_empty() {
            seen = Some(Box::new(Seen {
                stored_qos2: ids.into_iter().collect(),
                ..Seen::default()
            }));
        }
    }
    let mut ack_props = Props::default();
    if v5 {
        if let Some(id) = &assigned {
            ack_props.set(props::ASSIGNED_CLIENT_ID, Value::Str(id.clone()));
        }
        ack_props.set(props::RECEIVE_MAX, Value::U16(RECEIVE_MAX));
        ack_props.set(props::TOPIC_ALIAS_MAX, Value::U16(TOPIC_ALIAS_MAX));
        let max = u32::try_from(inner.settings.max_body.saturating_add(5)).unwrap_or(u32::MAX);
        ack_props.set(props::MAX_PACKET_SIZE, Value::U32(max));
        let asked = c.props.u32(props::SESSION_EXPIRY).unwrap_or(0);
        let granted = expiry.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        if asked != granted && asked != 0 {
            ack_props.set(props::SESSION_EXPIRY, Value::U32(granted));
        }
    }
    let ack = Packet::ConnAck(ConnAck {
        session_present: joined.session_present,
        code: 0,
        props: ack_props,
    });
    conn.queue(&ack, level);
    tracing::debug!(%peer, client_id = %client_id, level, session_present = joined.session_present, "client connected");
    let mut client = Client {
        inner: inner.clone(),
        peer,
        level,
        id: client_id,
        username,
        conn_id: joined.conn_id,
        link: joined.link,
        gate: AckGate::default(),
        commits: None,
        next_commit: 0,
        _slot: slot,
        stop,
        seen,
    };
    for out in joined.resend {
        client.write_out(conn, out);
    }
    Some(client)
}
