//! Serial sensors on real pseudo-terminals (`socat` PTY pairs): outpost
//! opens one end as its UART, the test plays the sensor (or a Modbus RTU
//! slave, with tokio-modbus's server) on the other; Modbus TCP slaves are
//! tokio-modbus's TCP server on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// The common config plus a route for serial readings and `serial` tables.
fn serial_config(site: &Site, serial: &str) -> String {
    let extra = format!("\n[[route]]\ntopic = \"devices/+/telemetry\"\nsink = \"up\"\n\n{serial}");
    site.mqtt("", &extra)
}

/// Waits until `outpost status` shows every named port open.
fn wait_open(op: &Outpost, ports: &[&str], opens: u64) {
    let ok = wait_until(Duration::from_secs(10), || {
        let s = op.status_json();
        if s["serial_control"] != true {
            return false;
        }
        ports.iter().all(|p| {
            s["serial"][p]["open"] == true && s["serial"][p]["opens"].as_u64() >= Some(opens)
        })
    });
    assert!(
        ok,
        "ports {ports:?} not open: {}\n{}",
        op.status_json(),
        op.log_text()
    );
}

fn write(f: &mut std::fs::File, bytes: &[u8]) {
    f.write_all(bytes).expect("write to the sensor end");
    f.flush().expect("flush");
}

/// Readings seen upstream: (device, values), in arrival order.
fn upstream_readings(seen: &[Seen]) -> Vec<(String, Value)> {
    seen.iter()
        .map(|s| {
            let v = s.json();
            (
                v["device"].as_str().unwrap_or_default().to_string(),
                v["values"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_kv_and_csv_lines_arrive_upstream_and_garbage_is_counted() {
    let w = World::new("");
    let collector = w.collect("site1/#").await;
    let (json_pty, kv_pty, csv_pty) = (
        Pty::new(w.path(), "json"),
        Pty::new(w.path(), "kv"),
        Pty::new(w.path(), "csv"),
    );
    let serial = format!(
        r#"
[[serial]]
name = "json-port"
path = "{}"
baud = 115200
protocol = "json"
device_field = "id"
max_line = "256B"

[[serial]]
name = "kv-port"
path = "{}"
protocol = "kv"
device = "weather"
parity = "even"
stop_bits = 2

[[serial]]
name = "csv-port"
path = "{}"
protocol = "csv"
columns = ["device", "temp", "hum"]
device_field = "device"
"#,
        json_pty.device.display(),
        kv_pty.device.display(),
        csv_pty.device.display()
    );
    let op = w.start(&serial_config(&w.site(), &serial));
    wait_open(&op, &["json-port", "kv-port", "csv-port"], 1);
    let (_local, mut local_rx) = subscriber(w.port, "dashboard", "devices/+/telemetry").await;

    let before = route_now_ms();
    let mut json_end = json_pty.sensor_file();
    write(&mut json_end, b"{\"id\":\"soil-1\",\"moisture\":31.5}\n");
    // Garbage: not UTF-8, a partial line, an over-long line, not an object.
    write(
        &mut json_end,
        b"\xff\xfe\x00junk\n{\"id\":\"soil-1\",\"moist\n",
    );
    write(&mut json_end, &[b'x'; 300]);
    write(&mut json_end, b"\n[1,2,3]\n");
    write(&mut json_end, b"{\"id\":\"soil-1\",\"moisture\":32}\r\n");
    let mut kv_end = kv_pty.sensor_file();
    write(&mut kv_end, b"temp=21.5,hum=40 wind=3.2\n");
    let mut csv_end = csv_pty.sensor_file();
    write(&mut csv_end, b"gh-3,19.25,55\ngh-3,19.5\ngh-4,20,60\n");

    assert_eq!(collector.wait_for(5, Duration::from_secs(10)).await, 5);
    collector
        .settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    let seen = collector.all();
    let mut got = upstream_readings(&seen);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("gh-3".to_string(), json!({"temp": 19.25, "hum": 55})),
            ("gh-4".to_string(), json!({"temp": 20, "hum": 60})),
            ("soil-1".to_string(), json!({"moisture": 31.5})),
            ("soil-1".to_string(), json!({"moisture": 32})),
            (
                "weather".to_string(),
                json!({"temp": 21.5, "hum": 40, "wind": 3.2})
            ),
        ]
    );
    // soil-1's two readings in the order read, stamped when read.
    let soil: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.topic == "site1/soil-1/telemetry")
        .collect();
    assert_eq!(soil[0].json()["values"], json!({"moisture": 31.5}));
    for s in &seen {
        let ts = s.json()["ts"].as_i64().expect("ts");
        assert!(
            ts >= before && ts <= route_now_ms(),
            "ts {ts} not the read time"
        );
    }

    // The same readings on the local broker, for LAN dashboards.
    let (topic, payload) = next(&mut local_rx).await;
    assert!(
        topic.starts_with("devices/") && topic.ends_with("/telemetry"),
        "{topic}"
    );
    let v: Value = serde_json::from_slice(&payload).expect("local payload is JSON");
    assert!(v["ts"].is_i64() && v["values"].is_object(), "{v}");

    let status = op.status_json();
    assert_eq!(status["serial"]["json-port"]["garbage"], 4, "{status}");
    assert_eq!(status["serial"]["json-port"]["readings"], 2, "{status}");
    assert_eq!(status["serial"]["csv-port"]["garbage"], 1, "{status}");
    assert_eq!(status["serial"]["kv-port"]["garbage"], 0, "{status}");
    // Logged once, not once per bad line.
    assert_eq!(
        op.log_text().matches("serial line skipped").count(),
        2,
        "{}",
        op.log_text()
    );
}

fn route_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unplugged_port_is_reopened_and_readings_resume() {
    let w = World::new("");
    let collector = w.collect("site1/#").await;
    let mut pty = Pty::new(w.path(), "usb");
    let serial = format!(
        r#"
[[serial]]
name = "usb0"
path = "{}"
protocol = "kv"
device = "tank"
reopen_min = "100ms"
reopen_max = "200ms"
"#,
        pty.device.display()
    );
    let mut op = w.start(&serial_config(&w.site(), &serial));
    wait_open(&op, &["usb0"], 1);
    write(&mut pty.sensor_file(), b"level=1\n");
    assert_eq!(collector.wait_for(1, Duration::from_secs(10)).await, 1);

    pty.unplug();
    assert!(
        wait_until(Duration::from_secs(10), || op.status_json()["serial"]
            ["usb0"]["open"]
            == false),
        "the port still counts as open after the unplug: {}",
        op.log_text()
    );
    // Many reopen attempts (every 100–200 ms) while it is gone...
    std::thread::sleep(Duration::from_millis(1500));
    assert!(op.alive(), "outpost must keep running without its port");
    pty.plug();
    wait_open(&op, &["usb0"], 2);
    write(&mut pty.sensor_file(), b"level=2\n");
    assert_eq!(collector.wait_for(2, Duration::from_secs(10)).await, 2);
    let values: Vec<Value> = upstream_readings(&collector.all())
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![json!({"level": 1}), json!({"level": 2})]);

    // ...but one line per change of state, not one per attempt.
    let log = op.log_text();
    assert_eq!(log.matches("serial port lost").count(), 1, "{log}");
    assert_eq!(log.matches("cannot open serial port").count(), 1, "{log}");
    assert_eq!(log.matches("serial port open").count(), 2, "{log}");
    assert_eq!(op.terminate().code(), Some(0));
}

/// A line sensor answering commands: RPC → command line → reply line.
#[tokio::test(flavor = "multi_thread")]
async fn rpc_and_shared_attributes_become_command_lines_and_replies_come_back() {
    let w = World::new("");
    let pty = Pty::new(w.path(), "cmd");
    let serial = format!(
        r#"
[[serial]]
name = "pump-port"
path = "{}"
protocol = "json"
device = "pump-1"
reply_timeout = "1s"
commands = {{ set_interval = "INTERVAL {{seconds}}", stop = "STOP" }}
attributes = {{ speed = "SPEED {{value}}" }}
"#,
        pty.device.display()
    );
    let op = w.start(&serial_config(&w.site(), &serial));
    wait_open(&op, &["pump-port"], 1);

    // The sensor: answers "INTERVAL n" with "OK n", stays silent on STOP,
    // and records every line it gets.
    let sensor = pty.sensor_file();
    let mut answer = sensor.try_clone().expect("clone");
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = got.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(sensor).lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("INTERVAL ") {
                let _ = writeln!(answer, "OK {n}");
            }
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });

    let (client, mut rx) = subscriber(w.port, "platform", "devices/pump-1/rpc/response/+").await;
    let rpc = |id: u32, body: Value| {
        let client = client.clone();
        async move {
            client
                .publish(
                    format!("devices/pump-1/rpc/request/{id}"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&body).expect("json"),
                )
                .await
                .expect("publish");
        }
    };
    rpc(
        1,
        json!({"method": "set_interval", "params": {"seconds": 30}}),
    )
    .await;
    let (topic, payload) = next(&mut rx).await;
    assert_eq!(topic, "devices/pump-1/rpc/response/1");
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).expect("json"),
        json!({"reply": "OK 30"})
    );

    // No reply within reply_timeout: an error answer, not a hang.
    rpc(2, json!({"method": "stop"})).await;
    let (topic, payload) = next(&mut rx).await;
    assert_eq!(topic, "devices/pump-1/rpc/response/2");
    let v: Value = serde_json::from_slice(&payload).expect("json");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("no reply")),
        "{v}"
    );

    rpc(3, json!({"method": "reboot"})).await;
    let (_, payload) = next(&mut rx).await;
    let v: Value = serde_json::from_slice(&payload).expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown method `reboot`")),
        "{v}"
    );

    // A shared attribute (as the ThingsBoard sink publishes them: retained,
    // merged) becomes its configured line.
    client
        .publish(
            "devices/pump-1/attributes",
            rumqttc::QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&json!({"speed": 1200, "colour": "red"})).expect("json"),
        )
        .await
        .expect("publish");
    assert!(
        wait_until(Duration::from_secs(5), || got
            .lock()
            .map(|l| l.contains(&"SPEED 1200".to_string()))
            .unwrap_or(false)),
        "no SPEED line: {:?}",
        got.lock().map(|l| l.clone())
    );
    // A value with a line break is not written: it would be a second
    // command. The next good value is.
    for speed in [json!("1\nREBOOT"), json!("2\rREBOOT"), json!(900)] {
        client
            .publish(
                "devices/pump-1/attributes",
                rumqttc::QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&json!({ "speed": speed })).expect("json"),
            )
            .await
            .expect("publish");
    }
    assert!(
        wait_until(Duration::from_secs(5), || got
            .lock()
            .map(|l| l.contains(&"SPEED 900".to_string()))
            .unwrap_or(false)),
        "no SPEED 900 line: {:?}",
        got.lock().map(|l| l.clone())
    );
    assert_eq!(
        got.lock().map(|l| l.clone()).unwrap_or_default(),
        ["INTERVAL 30", "STOP", "SPEED 1200", "SPEED 900"]
    );
    assert!(op.log_text().contains("its value has a line break"));
}

/// Registers of the simulated slaves: (slave, table, address) → word.
type Registers = Arc<Mutex<HashMap<(u8, &'static str, u16), u16>>>;

/// A Modbus RTU slave bus on the test's end of the PTY: slaves 1 and 3
/// answer from `regs`; slave 2 never answers.
#[derive(Clone)]
struct Bus {
    regs: Registers,
}

impl tokio_modbus::server::Service for Bus {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = Option<tokio_modbus::Response>;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<Self::Response, Self::Exception>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        use tokio_modbus::{ExceptionCode, Request, Response};
        let slave = req.slave;
        if slave == 2 {
            return std::future::ready(Ok(None));
        }
        let Ok(mut regs) = self.regs.lock() else {
            return std::future::ready(Err(ExceptionCode::ServerDeviceFailure));
        };
        let words = |table: &'static str, addr: u16, n: u16, regs: &HashMap<_, u16>| {
            (addr..addr + n)
                .map(|a| regs.get(&(slave, table, a)).copied())
                .collect::<Option<Vec<u16>>>()
        };
        let out = match req.request {
            Request::ReadHoldingRegisters(a, n) => words("holding", a, n, &regs)
                .map(Response::ReadHoldingRegisters)
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::ReadInputRegisters(a, n) => words("input", a, n, &regs)
                .map(Response::ReadInputRegisters)
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::ReadCoils(a, n) => words("coil", a, n, &regs)
                .map(|w| Response::ReadCoils(w.into_iter().map(|x| x != 0).collect()))
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(a, w) => {
                regs.insert((slave, "holding", a), w);
                Ok(Response::WriteSingleRegister(a, w))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(out.map(Some))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_slaves_are_polled_decoded_and_written_and_a_silent_one_blocks_no_other() {
    let w = World::new("");
    let collector = w.collect("site1/#").await;
    let pty = Pty::new(w.path(), "rs485");

    let f = 230.5f32.to_bits();
    let regs: Registers = Arc::new(Mutex::new(HashMap::from([
        ((1, "holding", 0), 1234),
        ((1, "holding", 1), (-215i16) as u16),
        ((1, "holding", 2), 0x0001), // u32 70000, high word first
        ((1, "holding", 3), 0x1170),
        ((1, "holding", 4), f as u16), // f32 230.5, low word first
        ((1, "holding", 5), (f >> 16) as u16),
        ((1, "holding", 10), 200), // setpoint 20.0 (scale 0.1), writable
        ((1, "input", 0), 130),    // 130 * 0.5 - 40 = 25.0
        ((1, "coil", 0), 1),
        ((3, "holding", 7), 7),
    ])));
    let serial =
        tokio_serial::SerialStream::open(&tokio_serial::new(pty.sensor.to_string_lossy(), 19_200))
            .expect("open the slave end");
    let server = tokio_modbus::server::rtu::Server::new(serial);
    let bus = Bus { regs: regs.clone() };
    let served = tokio::spawn(async move { server.serve_forever(bus).await });

    let serial = format!(
        r#"
[[serial]]
name = "rs485"
path = "{}"
baud = 19200
protocol = "modbus"

[[serial.slave]]
id = 1
device = "meter-1"
interval = "300ms"
timeout = "300ms"
register = [
  {{ key = "u16", address = 0 }},
  {{ key = "temp", address = 1, type = "i16", scale = 0.1 }},
  {{ key = "energy", address = 2, type = "u32" }},
  {{ key = "voltage", address = 4, type = "f32", word_order = "little" }},
  {{ key = "setpoint", address = 10, scale = 0.1, writable = true }},
  {{ key = "flow", table = "input", address = 0, scale = 0.5, offset = -40.0 }},
  {{ key = "running", table = "coil", address = 0, type = "bool" }},
]

[[serial.slave]]
id = 2
device = "meter-2"
interval = "300ms"
timeout = "100ms"
retries = 1
register = [ {{ key = "x", address = 0 }} ]

[[serial.slave]]
id = 3
device = "meter-3"
interval = "300ms"
register = [ {{ key = "count", address = 7 }} ]
"#,
        pty.device.display()
    );
    let op = w.start(&serial_config(&w.site(), &serial));
    wait_open(&op, &["rs485"], 1);

    let by_device = |device: &str| -> Vec<Value> {
        collector
            .all()
            .iter()
            .filter(|s| s.topic == format!("site1/{device}/telemetry"))
            .map(|s| s.json()["values"].clone())
            .collect()
    };
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || by_device("meter-3").len() >= 6),
        "meter-3: {:?}\n{}",
        by_device("meter-3"),
        op.log_text()
    );
    let elapsed = t0.elapsed();
    let meter1 = by_device("meter-1");
    assert_eq!(
        meter1.first(),
        Some(&json!({
            "u16": 1234, "temp": -21.5, "energy": 70000, "voltage": 230.5,
            "setpoint": 20.0, "flow": 25.0, "running": true
        })),
        "{meter1:?}"
    );
    assert!(
        by_device("meter-2").is_empty(),
        "a silent slave gives no readings"
    );
    // Six meter-3 readings at a 300 ms interval: the silent slave's
    // 2 × 100 ms per round does not stall the others.
    assert!(
        elapsed < Duration::from_secs(5),
        "six meter-3 polls took {elapsed:?}"
    );
    let status = op.status_json();
    let slaves = &status["serial"]["rs485"]["slaves"];
    assert!(slaves["2"]["timeouts"].as_u64() >= Some(2), "{status}");
    assert_eq!(slaves["1"]["timeouts"], 0, "{status}");
    assert_eq!(slaves["3"]["timeouts"], 0, "{status}");
    assert_eq!(
        op.log_text()
            .matches("Modbus slave does not answer")
            .count(),
        1
    );

    // RPC: write the setpoint (21.5 → raw 215) through the shared bus.
    let (client, mut rx) = subscriber(w.port, "platform", "devices/+/rpc/response/+").await;
    let request = json!({"method": "write_register", "params": {"key": "setpoint", "value": 21.5}});
    let v = rpc_call(&client, &mut rx, "meter-1", 9, request).await;
    assert_eq!(v["written"], true, "{v}");
    assert_eq!(
        regs.lock()
            .map(|r| r.get(&(1, "holding", 10)).copied())
            .ok()
            .flatten(),
        Some(215)
    );
    assert!(
        wait_until(Duration::from_secs(5), || by_device("meter-1")
            .iter()
            .any(|v| v["setpoint"] == json!(21.5))),
        "the written setpoint is read back"
    );

    // A write the register map refuses, and one to the silent slave.
    client
        .publish(
            "devices/meter-1/rpc/request/10",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(
                &json!({"method": "write_register", "params": {"key": "temp", "value": 1}}),
            )
            .expect("json"),
        )
        .await
        .expect("publish");
    let (_, payload) = next(&mut rx).await;
    let v: Value = serde_json::from_slice(&payload).expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not writable")),
        "{v}"
    );
    client
        .publish(
            "devices/meter-2/rpc/request/11",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&json!({"method": "read"})).expect("json"),
        )
        .await
        .expect("publish");
    let (topic, payload) = next(&mut rx).await;
    assert_eq!(topic, "devices/meter-2/rpc/response/11");
    let v: Value = serde_json::from_slice(&payload).expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{v}"
    );
    served.abort();
}

#[test]
fn check_config_names_bad_serial_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("outpost.toml");
    std::fs::write(
        &path,
        r#"
[[serial]]
name = "a"
path = "/dev/ttyUSB0"
protocol = "csv"
data_bits = 9

[[serial]]
name = "b"
path = "/dev/ttyUSB1"
protocol = "modbus"
bauds = 9600

[[serial.slave]]
id = 0
device = "m"
register = [ { key = "on", table = "coil", address = 1 } ]

[[serial]]
name = "c"
transport = "tcp"
address = "plc.local"
protocol = "json"

[[serial]]
name = "d"
transport = "tcp"
protocol = "modbus"
slave = [ { id = 1, device = "d1", register = [ { key = "x", address = 0 } ] } ]

[[serial]]
name = "e"
protocol = "json"
"#,
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for want in [
        "serial[0].columns",
        "serial[0].data_bits",
        "serial[1].bauds: unknown field",
        "serial[1].slave[0].id",
        "serial[1].slave[0].register[0].type: coils and discrete inputs are `bool`",
        "serial[2].address: `plc.local` is not host:port",
        "serial[2].transport: tcp is for protocol = \"modbus\" only",
        "serial[3].address: Modbus TCP needs the slave's host:port",
        "serial[4].path: the serial device is missing",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

/// Sends an RPC to a local device as the platform would and returns the
/// device's answer (on `devices/{device}/rpc/response/{id}`).
async fn rpc_call(
    client: &rumqttc::AsyncClient,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    device: &str,
    id: u32,
    request: Value,
) -> Value {
    client
        .publish(
            format!("devices/{device}/rpc/request/{id}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&request).expect("json"),
        )
        .await
        .expect("publish");
    let (topic, payload) = next(rx).await;
    assert_eq!(topic, format!("devices/{device}/rpc/response/{id}"));
    serde_json::from_slice(&payload).expect("json")
}

/// Serves `bus` as a Modbus TCP server on `listener` (tokio-modbus's own).
fn serve_tcp(listener: tokio::net::TcpListener, bus: Bus) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = |stream, addr| {
            let bus = bus.clone();
            async move {
                tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, |_| {
                    Ok(Some(bus.clone()))
                })
            }
        };
        let _ = server.serve(&on_connected, |_| {}).await;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_tcp_slaves_are_polled_written_and_reconnected_like_rtu_ones() {
    let w = World::new("");
    let collector = w.collect("site1/#").await;
    let regs: Registers = Arc::new(Mutex::new(HashMap::from([
        ((1, "holding", 0), (-215i16) as u16),
        ((1, "holding", 10), 200),
        ((3, "input", 4), 42),
    ])));
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the Modbus TCP server");
    let served = serve_tcp(listener, Bus { regs: regs.clone() });

    let serial = format!(
        r#"
[[serial]]
name = "plc"
transport = "tcp"
address = "127.0.0.1:{port}"
protocol = "modbus"
reopen_min = "200ms"
reopen_max = "1s"

[[serial.slave]]
id = 1
device = "plc-1"
interval = "300ms"
timeout = "300ms"
register = [
  {{ key = "temp", address = 0, type = "i16", scale = 0.1 }},
  {{ key = "setpoint", address = 10, scale = 0.1, writable = true }},
]

[[serial.slave]]
id = 2
device = "plc-2"
interval = "300ms"
timeout = "100ms"
retries = 0
register = [ {{ key = "x", address = 0 }} ]

[[serial.slave]]
id = 3
device = "plc-3"
interval = "300ms"
register = [ {{ key = "level", table = "input", address = 4 }} ]
"#
    );
    let op = w.start(&serial_config(&w.site(), &serial));
    wait_open(&op, &["plc"], 1);
    let by_device = |device: &str| -> Vec<Value> {
        collector
            .all()
            .iter()
            .filter(|s| s.topic == format!("site1/{device}/telemetry"))
            .map(|s| s.json()["values"].clone())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || by_device("plc-3").len() >= 3),
        "plc-3: {:?}\n{}",
        by_device("plc-3"),
        op.log_text()
    );
    assert_eq!(
        by_device("plc-1").first(),
        Some(&json!({"temp": -21.5, "setpoint": 20.0}))
    );
    assert_eq!(by_device("plc-3").first(), Some(&json!({"level": 42})));
    assert!(
        by_device("plc-2").is_empty(),
        "a silent unit gives no readings"
    );
    let status = op.status_json();
    let slaves = &status["serial"]["plc"]["slaves"];
    assert!(slaves["2"]["timeouts"].as_u64() >= Some(1), "{status}");
    assert_eq!(slaves["1"]["timeouts"], 0, "{status}");

    // An RPC write goes over the same connection.
    let (client, mut rx) = subscriber(w.port, "platform-tcp", "devices/+/rpc/response/+").await;
    let request = json!({"method": "write_register", "params": {"key": "setpoint", "value": 23.5}});
    let v = rpc_call(&client, &mut rx, "plc-1", 1, request).await;
    assert_eq!(v["written"], true, "{v}");
    assert_eq!(
        regs.lock()
            .map(|r| r.get(&(1, "holding", 10)).copied())
            .ok()
            .flatten(),
        Some(235)
    );

    // The server goes away and comes back: outpost reconnects.
    served.abort();
    let _ = served.await;
    assert!(
        wait_until(Duration::from_secs(10), || op.status_json()["serial"]
            ["plc"]["open"]
            == false),
        "the lost connection is seen: {}",
        op.status_json()
    );
    let before = by_device("plc-3").len();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind again");
    let served = serve_tcp(listener, Bus { regs: regs.clone() });
    wait_open(&op, &["plc"], 2);
    assert!(
        wait_until(Duration::from_secs(10), || by_device("plc-3").len()
            > before + 1),
        "readings resume after the reconnect\n{}",
        op.log_text()
    );
    served.abort();
}
