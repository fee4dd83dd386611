//! Serial sensors: `[[serial]]` ports read with `tokio-serial`.
//!
//! Each port is one task that owns the port for its whole life: it opens it
//! (and reopens it, with backoff, when a USB adapter is unplugged), reads
//! lines or polls Modbus slaves, and writes commands between reads, so two
//! writers never share a wire. A reading becomes a record exactly like an
//! MQTT reading: it takes the port's topic (`devices/{device}/telemetry`),
//! goes through the same routes into the outbox, and is also published on
//! the local broker for LAN subscribers.
//!
//! - `lines`: framing and the JSON, key=value and CSV parsers;
//! - `modbus`: RTU polling, register decoding and writes;
//! - `local`: the local-broker client (readings out, RPC and attributes in).

mod lines;
pub mod local;
mod modbus;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::units::deadline;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::config::serial::{FlowControl, Parity, Protocol, SerialConfig, SlaveConfig, Transport};
use crate::source::broker::Broker;
use crate::source::Ingest;
use crate::stats::{self, PortStats};
use crate::topic::DeviceTopics;

use lines::{Frame, Framer, Garbage};
use modbus::Outcome;

/// A request for a port, from the local broker.
#[derive(Debug)]
pub struct Control {
    pub device: String,
    pub kind: ControlKind,
}

#[derive(Debug)]
pub enum ControlKind {
    Rpc {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, String>>,
    },
    /// Shared attributes that changed.
    Attributes(Map<String, Value>),
}

/// Starts one task per enabled port, and the local-broker client.
pub fn spawn(
    ports: &[SerialConfig],
    ingest: Ingest,
    local: Broker,
    topics: DeviceTopics,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let (readings_tx, readings) = mpsc::channel(1024);
    let mut owners = HashMap::new();
    for cfg in ports {
        if !cfg.enabled {
            tracing::info!(port = %cfg.name, endpoint = %cfg.endpoint(), "serial port disabled");
            continue;
        }
        let (control_tx, control) = mpsc::channel(64);
        if cfg.protocol == Protocol::Modbus {
            for s in &cfg.slave {
                owners.insert(s.device.clone(), control_tx.clone());
            }
        } else {
            owners.insert(cfg.device_name().to_string(), control_tx);
        }
        let port_stats = ingest
            .stats()
            .serial
            .get(&cfg.name)
            .cloned()
            .unwrap_or_default();
        let emitter = Emitter {
            cfg: cfg.clone(),
            ingest: ingest.clone(),
            port_stats,
            local: cfg.publish_local.then(|| readings_tx.clone()),
        };
        tasks.spawn(run_port(cfg.clone(), emitter, control, shutdown.clone()));
    }
    drop(readings_tx);
    if !owners.is_empty() {
        tasks.spawn(local::run(
            local,
            topics,
            owners,
            readings,
            Some(ingest.stats().clone()),
            shutdown.clone(),
        ));
    }
}

/// Turns values read from a port into records (and a local publish).
struct Emitter {
    cfg: SerialConfig,
    ingest: Ingest,
    port_stats: Arc<PortStats>,
    local: Option<mpsc::Sender<(String, Vec<u8>)>>,
}

impl Emitter {
    async fn emit(&mut self, device: &str, values: Map<String, Value>) -> Result<(), ()> {
        let topic = self
            .cfg
            .topic
            .replace("{device}", device)
            .replace("{port}", &self.cfg.name);
        stats::add(&self.port_stats.readings, 1);
        let payload = self
            .ingest
            .reading(&topic, device, values)
            .await
            .map_err(|_| ())?;
        if let Some(local) = &self.local {
            let _ = local.try_send((topic, payload));
        }
        Ok(())
    }
}

/// An open port: a serial line, or a Modbus TCP connection.
enum Port {
    Serial(SerialStream),
    Tcp(tokio::net::TcpStream),
}

/// Opens the serial port, or connects to the Modbus TCP slave (bounded by
/// `reopen_max`, so a host that drops packets is retried like a missing
/// port).
async fn open(cfg: &SerialConfig) -> Result<Port, String> {
    match (cfg.transport, &cfg.address) {
        (Transport::Tcp, Some(addr)) => {
            let connect = tokio::net::TcpStream::connect(addr.as_str());
            match tokio::time::timeout(cfg.reopen_max.0, connect).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Port::Tcp(s))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", cfg.reopen_max.0.as_secs())),
            }
        }
        _ => open_serial(cfg)
            .map(Port::Serial)
            .map_err(|e| e.to_string()),
    }
}

fn open_serial(cfg: &SerialConfig) -> Result<SerialStream, tokio_serial::Error> {
    use tokio_serial::{DataBits, StopBits};
    let data_bits = match cfg.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let flow = match cfg.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(cfg.path.to_string_lossy(), cfg.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(if cfg.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .flow_control(flow)
        .open_native_async()
}

/// Why a port session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Opens the port, runs it, and reopens it with backoff when it goes away.
/// Logs once per change of state, not once per attempt.
async fn run_port(
    cfg: SerialConfig,
    mut emitter: Emitter,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) {
    let port = cfg.name.clone();
    let stats = emitter.port_stats.clone();
    let mut delay = cfg.reopen_min.0;
    let mut failing: Option<String> = None;
    loop {
        match open(&cfg).await {
            Ok(stream) => {
                stats.open.store(true, Ordering::Relaxed);
                stats::add(&stats.opens, 1);
                tracing::info!(%port, endpoint = %cfg.endpoint(), baud = cfg.baud, "serial port open");
                for device in spoken_by(&cfg) {
                    emitter.ingest.presence().back(&device);
                }
                failing = None;
                delay = cfg.reopen_min.0;
                let end = match (cfg.protocol, stream) {
                    (Protocol::Modbus, Port::Serial(s)) => {
                        let ctx = tokio_modbus::client::rtu::attach(s);
                        run_modbus(&cfg, ctx, &mut emitter, &mut control, &shutdown).await
                    }
                    (Protocol::Modbus, Port::Tcp(s)) => {
                        let ctx = tokio_modbus::client::tcp::attach(s);
                        run_modbus(&cfg, ctx, &mut emitter, &mut control, &shutdown).await
                    }
                    (_, Port::Serial(s)) => {
                        run_lines(&cfg, s, &mut emitter, &mut control, &shutdown).await
                    }
                    // The config check allows TCP for Modbus only.
                    (_, Port::Tcp(_)) => End::Lost("line protocols need a serial port".into()),
                };
                stats.open.store(false, Ordering::Relaxed);
                match end {
                    End::Shutdown => return,
                    End::Lost(e) => {
                        tracing::warn!(%port, endpoint = %cfg.endpoint(), error = %e, "serial port lost; reopening");
                        for device in spoken_by(&cfg) {
                            emitter
                                .ingest
                                .presence()
                                .gone(&device, "its serial port disappeared");
                        }
                    }
                }
            }
            Err(text) => {
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(%port, endpoint = %cfg.endpoint(), error = %text,
                        retry_max_s = cfg.reopen_max.0.as_secs_f64(), "cannot open serial port; retrying");
                    failing = Some(text);
                }
            }
        }
        // Wait before reopening; requests meanwhile get a clear answer.
        let until = deadline(delay);
        delay = delay.saturating_mul(2).min(cfg.reopen_max.0);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                c = control.recv() => match c {
                    Some(c) => refuse(c, &format!("serial port {} ({}) is not open", port, cfg.endpoint())),
                    None => return,
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The devices a port speaks for: its slaves, or its device.
fn spoken_by(cfg: &SerialConfig) -> Vec<String> {
    match cfg.protocol {
        Protocol::Modbus => cfg.slave.iter().map(|s| s.device.clone()).collect(),
        _ => vec![cfg.device_name().to_string()],
    }
}

fn refuse(c: Control, why: &str) {
    if let ControlKind::Rpc { reply, .. } = c.kind {
        let _ = reply.send(Err(why.to_string()));
    }
}

/// Garbage is logged at most every 30 s, with the count since the last line.
struct GarbageLog {
    last: Option<Instant>,
    since: u64,
}

impl GarbageLog {
    fn note(&mut self, port: &str, why: &Garbage, line: &[u8]) {
        self.since = self.since.saturating_add(1);
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
        {
            return;
        }
        let sample: String = String::from_utf8_lossy(line.get(..64).unwrap_or(line))
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        tracing::warn!(%port, reason = %why, sample = %sample, count = self.since,
            "serial line skipped (further ones are counted and logged every 30s)");
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

async fn run_lines(
    cfg: &SerialConfig,
    stream: SerialStream,
    emitter: &mut Emitter,
    control: &mut mpsc::Receiver<Control>,
    shutdown: &CancellationToken,
) -> End {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = Framer::new(cfg.max_line.0 as usize);
    let mut garbage = GarbageLog {
        last: None,
        since: 0,
    };
    let mut buf = vec![0u8; 1024];
    // A command waiting for the line that answers it.
    let mut awaiting: Option<(Instant, oneshot::Sender<Result<Value, String>>)> = None;
    let stats = emitter.port_stats.clone();
    loop {
        let deadline = awaiting.as_ref().map(|(d, _)| *d);
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = match n {
                    Ok(0) => return End::Lost("end of file".into()),
                    Ok(n) => n,
                    Err(e) => return End::Lost(e.to_string()),
                };
                for frame in framer.push(buf.get(..n).unwrap_or_default()) {
                    let line = match frame {
                        Frame::Line(l) => l,
                        Frame::TooLong => {
                            stats::add(&stats.garbage, 1);
                            garbage.note(&cfg.name, &Garbage::TooLong, b"");
                            continue;
                        }
                    };
                    if let Some((_, reply)) = awaiting.take() {
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        let answer = serde_json::from_str::<Value>(&text)
                            .unwrap_or_else(|_| serde_json::json!({ "reply": text }));
                        let _ = reply.send(Ok(answer));
                        continue;
                    }
                    match lines::parse(cfg, &line) {
                        Ok(p) => {
                            let device = p.device.unwrap_or_else(|| cfg.device_name().to_string());
                            if emitter.emit(&device, p.values).await.is_err() {
                                return End::Shutdown;
                            }
                        }
                        Err(why) => {
                            stats::add(&stats.garbage, 1);
                            garbage.note(&cfg.name, &why, &line);
                        }
                    }
                }
            }
            c = control.recv() => {
                let Some(c) = c else { return End::Shutdown };
                match c.kind {
                    ControlKind::Rpc { method, params, reply } => {
                        let Some(template) = cfg.commands.get(&method) else {
                            let known: Vec<&str> = cfg.commands.keys().map(String::as_str).collect();
                            let _ = reply.send(Err(format!("unknown method `{method}` for serial device `{}` (known: {})", c.device, known.join(", "))));
                            continue;
                        };
                        if awaiting.is_some() {
                            let _ = reply.send(Err("another command is waiting for its reply".into()));
                            continue;
                        }
                        let line = match render(template, &params) {
                            Ok(l) => l,
                            Err(e) => { let _ = reply.send(Err(e)); continue; }
                        };
                        if let Err(e) = write_line(&mut wr, &line, &cfg.line_ending).await {
                            let _ = reply.send(Err(format!("cannot write to the serial port: {e}")));
                            return End::Lost(e.to_string());
                        }
                        tracing::info!(port = %cfg.name, %method, "command written to serial device");
                        if cfg.reply_timeout.0.is_zero() {
                            let _ = reply.send(Ok(serde_json::json!({ "written": true })));
                        } else {
                            awaiting = Some((crate::units::deadline(cfg.reply_timeout.0), reply));
                        }
                    }
                    ControlKind::Attributes(changed) => {
                        for (key, value) in changed {
                            let Some(template) = cfg.attributes.get(&key) else { continue };
                            let text = match &value { Value::String(s) => s.clone(), v => v.to_string() };
                            let line = template.replace("{value}", &text);
                            if has_line_break(&line) {
                                // `"1\nREBOOT"` must not become two commands.
                                tracing::warn!(port = %cfg.name, attribute = %key, "shared attribute not written: its value has a line break");
                                continue;
                            }
                            if let Err(e) = write_line(&mut wr, &line, &cfg.line_ending).await {
                                return End::Lost(e.to_string());
                            }
                            tracing::info!(port = %cfg.name, attribute = %key, "shared attribute written to serial device");
                        }
                    }
                }
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                if let Some((_, reply)) = awaiting.take() {
                    let _ = reply.send(Err(format!("no reply from the serial device within {}ms", cfg.reply_timeout.0.as_millis())));
                }
            }
            _ = shutdown.cancelled() => return End::Shutdown,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn write_line<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    line: &str,
    ending: &str,
) -> std::io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(ending.as_bytes()).await?;
    w.flush().await
}

/// One command line must stay one: a value with a line break in it would
/// write a second command the device then runs.
fn has_line_break(line: &str) -> bool {
    line.contains(['\n', '\r'])
}

/// Fills `{key}` from the RPC params (`{params}`: all of them as JSON).
fn render(template: &str, params: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        let Some((key, tail)) = after.split_once('}') else {
            out.push('{');
            out.push_str(after);
            return Ok(out);
        };
        let value = if key == "params" {
            Some(params)
        } else {
            params.get(key)
        };
        match value {
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
            None => return Err(format!("the command needs params.{key}")),
        }
        rest = tail;
    }
    out.push_str(rest);
    if has_line_break(&out) {
        return Err("a command line may not contain a line break".into());
    }
    Ok(out)
}

async fn run_modbus(
    cfg: &SerialConfig,
    mut ctx: tokio_modbus::client::Context,
    emitter: &mut Emitter,
    control: &mut mpsc::Receiver<Control>,
    shutdown: &CancellationToken,
) -> End {
    let start = Instant::now();
    let mut due: Vec<Instant> = cfg.slave.iter().map(|_| start).collect();
    let mut failing: Vec<bool> = cfg.slave.iter().map(|_| false).collect();
    let stats = emitter.port_stats.clone();
    loop {
        let (next, at) = due
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| **t)
            .map(|(i, t)| (i, *t))
            .unwrap_or((0, deadline(Duration::from_secs(3600))));
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {
                let (Some(slave), Some(when), Some(failing)) =
                    (cfg.slave.get(next), due.get_mut(next), failing.get_mut(next))
                else {
                    return End::Shutdown;
                };
                let slave_stats = stats.slave(slave.id);
                stats::add(&slave_stats.polls, 1);
                let (values, failure) = modbus::poll(&mut ctx, slave).await;
                let now = Instant::now();
                *when = when.checked_add(slave.interval.0).unwrap_or(now).max(now);
                match &failure {
                    None => {}
                    Some(Outcome::Timeout) => stats::add(&slave_stats.timeouts, 1),
                    Some(Outcome::Exception(_)) => stats::add(&slave_stats.exceptions, 1),
                    Some(Outcome::PortError(e)) => return End::Lost(e.clone()),
                    Some(Outcome::Ok(())) => {}
                }
                note_slave(&cfg.name, slave, &failure, failing);
                if !values.is_empty() && emitter.emit(&slave.device, values).await.is_err() {
                    return End::Shutdown;
                }
            }
            c = control.recv() => {
                let Some(c) = c else { return End::Shutdown };
                let Some(slave) = cfg.slave.iter().find(|s| s.device == c.device) else {
                    refuse(c, "no such Modbus device on this port");
                    continue;
                };
                match c.kind {
                    ControlKind::Rpc { method, params, reply } => {
                        let answer = modbus_rpc(&mut ctx, slave, &method, &params).await;
                        let _ = reply.send(answer);
                    }
                    ControlKind::Attributes(changed) => {
                        for (key, value) in changed {
                            let Some(r) = slave.register.iter().find(|r| r.key == key && r.writable) else { continue };
                            match modbus::write(&mut ctx, slave, r, &value).await {
                                Ok(()) => tracing::info!(port = %cfg.name, device = %slave.device, attribute = %key, "shared attribute written to Modbus register"),
                                Err(e) => tracing::warn!(port = %cfg.name, device = %slave.device, attribute = %key, error = %e, "cannot write shared attribute to Modbus register"),
                            }
                        }
                    }
                }
            }
            _ = shutdown.cancelled() => return End::Shutdown,
        }
    }
}

/// `write_register`/`write_coil` with `{"key": .., "value": ..}`, and
/// `read` with `{"key": ..}` or no params (all registers).
async fn modbus_rpc(
    ctx: &mut tokio_modbus::client::Context,
    slave: &SlaveConfig,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    match method {
        "write_register" | "write_coil" => {
            let key = params["key"]
                .as_str()
                .ok_or("params.key names the register to write")?;
            let r = slave
                .register
                .iter()
                .find(|r| r.key == key)
                .ok_or_else(|| format!("device `{}` has no register `{key}`", slave.device))?;
            if !r.writable {
                return Err(format!("register `{key}` is not writable (set writable = true)"));
            }
            let value = params.get("value").ok_or("params.value is missing")?;
            modbus::write(ctx, slave, r, value).await?;
            Ok(serde_json::json!({ "written": true, "key": key, "value": value }))
        }
        "read" => {
            let (values, failure) = modbus::poll(ctx, slave).await;
            match (failure, params["key"].as_str()) {
                (Some(Outcome::Timeout), _) => Err(format!(
                    "slave {} did not answer within {}ms",
                    slave.id,
                    slave.timeout.0.as_millis()
                )),
                (Some(Outcome::PortError(e)), _) => Err(format!("serial port error: {e}")),
                (_, Some(key)) => values
                    .get(key)
                    .cloned()
                    .map(|v| serde_json::json!({ key: v }))
                    .ok_or_else(|| format!("register `{key}` could not be read")),
                (_, None) => Ok(Value::Object(values)),
            }
        }
        other => Err(format!(
            "unknown method `{other}` for Modbus device `{}` (known: read, write_register, write_coil)",
            slave.device
        )),
    }
}

/// Logs a slave's failures once when they start and once when they end.
fn note_slave(port: &str, slave: &SlaveConfig, failure: &Option<Outcome<()>>, failing: &mut bool) {
    match failure {
        Some(Outcome::Timeout) if !*failing => {
            *failing = true;
            tracing::warn!(%port, slave = slave.id, device = %slave.device,
                timeout_ms = slave.timeout.0.as_millis() as u64, "Modbus slave does not answer");
        }
        Some(Outcome::Exception(e)) if !*failing => {
            *failing = true;
            tracing::warn!(%port, slave = slave.id, device = %slave.device, exception = %e,
                "Modbus slave answers with an exception");
        }
        None if *failing => {
            *failing = false;
            tracing::info!(%port, slave = slave.id, device = %slave.device, "Modbus slave answers again");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_templates_take_params() {
        assert_eq!(
            render("INTERVAL {seconds}", &json!({"seconds": 30})),
            Ok("INTERVAL 30".into())
        );
        assert_eq!(
            render("NAME {name}", &json!({"name": "tank"})),
            Ok("NAME tank".into())
        );
        assert_eq!(
            render("SET {params}", &json!({"a": 1})),
            Ok("SET {\"a\":1}".into())
        );
        assert_eq!(
            render("INTERVAL {seconds}", &json!({})),
            Err("the command needs params.seconds".into())
        );
        assert!(render("X {v}", &json!({"v": "a\nREBOOT"})).is_err());
    }
}
