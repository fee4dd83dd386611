//! `[[serial]]`: sensors on a UART or a USB-serial adapter, either talking
//! on their own (line protocols) or polled as Modbus RTU slaves; and Modbus
//! TCP slaves (`transport = "tcp"`, `address = "host:502"`), configured and
//! polled the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::problem::Problem;
use crate::units::{ByteSize, Seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Unique name of the port; the device name of its readings unless a
    /// line names its own device (`device_field`) or `device` is set.
    pub name: String,
    /// `/dev/ttyUSB0`, or better a stable `/dev/serial/by-id/...` path
    /// (`transport = "rtu"`, the default).
    #[serde(default)]
    pub path: PathBuf,
    /// `rtu`: a serial line; `tcp`: Modbus TCP to `address`.
    #[serde(default)]
    pub transport: Transport,
    /// Modbus TCP: `host:port` of the slave or gateway (the slaves' `id`
    /// is the unit identifier).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub flow_control: FlowControl,
    /// `false` keeps the port closed (its config stays checked).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The device name for readings from this port (default: `name`).
    #[serde(default)]
    pub device: Option<String>,
    pub protocol: Protocol,
    /// json/kv/csv: the field that names the device; taken out of the values.
    #[serde(default)]
    pub device_field: Option<String>,
    /// kv: between pairs (default `,`; whitespace also separates).
    #[serde(default = "default_pair_separator")]
    pub pair_separator: String,
    /// kv: between a key and its value.
    #[serde(default = "default_kv_separator")]
    pub kv_separator: String,
    /// csv: the column names, in order.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default = "default_csv_separator")]
    pub csv_separator: String,
    /// Longer lines are counted as garbage and skipped.
    #[serde(default = "default_max_line")]
    pub max_line: ByteSize,
    /// The topic a reading takes: routes match it like an MQTT reading, and
    /// it is published on the local broker (unless `publish_local = false`).
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_true")]
    pub publish_local: bool,
    /// Retry a port that is gone or fails to open: from `reopen_min`,
    /// doubling up to `reopen_max`.
    #[serde(default = "default_reopen_min")]
    pub reopen_min: Seconds,
    #[serde(default = "default_reopen_max")]
    pub reopen_max: Seconds,
    /// Line ports: RPC method → line written to the port. `{key}` is
    /// replaced by `params.key` of the RPC request (`{params}` by all
    /// params as JSON).
    #[serde(default)]
    pub commands: BTreeMap<String, String>,
    /// Line ports: shared attribute → line written when it changes;
    /// `{value}` is the attribute's value.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Appended to every command line.
    #[serde(default = "default_line_ending")]
    pub line_ending: String,
    /// Line ports: how long to wait for the line that answers a command.
    /// `0s`: commands get no reply (the RPC answers `{"written": true}`).
    #[serde(default = "default_reply_timeout")]
    pub reply_timeout: Seconds,
    /// Modbus: the slaves on this bus, polled in turn.
    #[serde(default)]
    pub slave: Vec<SlaveConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Rtu,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    #[default]
    None,
    Software,
    Hardware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// One JSON object per line.
    Json,
    /// `temp=21.5,hum=40` per line.
    Kv,
    /// `21.5,40` per line, named by `columns`.
    Csv,
    /// Modbus RTU polling of `[[serial.slave]]`.
    Modbus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaveConfig {
    /// Modbus slave address, 1..=247.
    pub id: u8,
    /// Device name of this slave's readings.
    pub device: String,
    #[serde(default = "default_poll_interval")]
    pub interval: Seconds,
    /// How long to wait for each answer.
    #[serde(default = "default_modbus_timeout")]
    pub timeout: Seconds,
    /// Further attempts after a timeout.
    #[serde(default = "default_retries")]
    pub retries: u32,
    pub register: Vec<RegisterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The value's key in the reading.
    pub key: String,
    #[serde(default)]
    pub table: Table,
    /// 0-based register (or coil) address.
    pub address: u16,
    #[serde(default, rename = "type")]
    pub ty: RegisterType,
    /// For 32-bit types: which register holds the high word.
    #[serde(default)]
    pub word_order: WordOrder,
    /// value = raw * scale + offset
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// May be written by RPC (`write_register`) or a shared attribute.
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    #[default]
    Holding,
    Input,
    Coil,
    Discrete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RegisterType {
    #[default]
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
}

impl RegisterType {
    /// Registers (or coils) the value spans.
    pub fn width(self) -> u16 {
        match self {
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word first (the Modbus convention).
    #[default]
    Big,
    /// Low word first ("word swapped").
    Little,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_pair_separator() -> String {
    ",".into()
}
fn default_kv_separator() -> String {
    "=".into()
}
fn default_csv_separator() -> String {
    ",".into()
}
fn default_max_line() -> ByteSize {
    ByteSize(4096)
}
fn default_topic() -> String {
    "devices/{device}/telemetry".into()
}
fn default_reopen_min() -> Seconds {
    Seconds(Duration::from_secs(1))
}
fn default_reopen_max() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_line_ending() -> String {
    "\n".into()
}
fn default_reply_timeout() -> Seconds {
    Seconds(Duration::from_secs(2))
}
fn default_poll_interval() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_modbus_timeout() -> Seconds {
    Seconds(Duration::from_millis(500))
}
fn default_retries() -> u32 {
    1
}
fn default_scale() -> f64 {
    1.0
}

impl SerialConfig {
    /// Where the port is, for messages: its path, or `tcp://host:port`.
    pub fn endpoint(&self) -> String {
        match (self.transport, &self.address) {
            (Transport::Tcp, Some(a)) => format!("tcp://{a}"),
            _ => self.path.display().to_string(),
        }
    }

    /// The device name of a reading that does not name its own.
    pub fn device_name(&self) -> &str {
        self.device.as_deref().unwrap_or(&self.name)
    }
}

/// Checks what serde cannot: ranges, combinations, unique names.
pub fn check(ports: &[(usize, SerialConfig)], problems: &mut Vec<Problem>) {
    let mut names = BTreeMap::new();
    for (i, s) in ports {
        let at = |k: &str| format!("serial[{i}].{k}");
        let mut bad = |k: &str, message: String| {
            problems.push(Problem {
                path: at(k),
                message,
            })
        };
        if !super::valid_name(&s.name) {
            bad(
                "name",
                "may use only letters, digits, `-` and `_`".to_string(),
            );
        }
        if let Some(first) = names.insert(s.name.clone(), *i) {
            bad(
                "name",
                format!("`{}` is also serial[{first}]'s name", s.name),
            );
        }
        if s.baud == 0 {
            bad("baud", "must be at least 1".into());
        }
        if !(5..=8).contains(&s.data_bits) {
            bad("data_bits", "must be 5, 6, 7 or 8".into());
        }
        if !(1..=2).contains(&s.stop_bits) {
            bad("stop_bits", "must be 1 or 2".into());
        }
        if s.max_line.0 < 16 || s.max_line.0 > 1 << 20 {
            bad("max_line", "must be between 16 bytes and 1 MiB".into());
        }
        if s.reopen_min.0.is_zero() || s.reopen_max.0 < s.reopen_min.0 {
            bad(
                "reopen_max",
                "reopen_min must be above 0 and reopen_max at least reopen_min".into(),
            );
        }
        if let Err(e) = check_topic_template(&s.topic) {
            bad("topic", e);
        }
        match (s.transport, &s.address) {
            (Transport::Rtu, None) if s.path.as_os_str().is_empty() => bad(
                "path",
                "the serial device is missing (path = \"/dev/ttyUSB0\"), or set transport = \"tcp\" and address for Modbus TCP".into(),
            ),
            (Transport::Rtu, Some(_)) => bad(
                "address",
                "only for transport = \"tcp\" (a serial port has a path)".into(),
            ),
            (Transport::Tcp, None) => bad(
                "address",
                "Modbus TCP needs the slave's host:port (address = \"192.168.1.20:502\")".into(),
            ),
            (Transport::Tcp, Some(a)) => {
                let port_ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok {
                    bad("address", format!("`{a}` is not host:port (like 192.168.1.20:502)"));
                }
                if s.protocol != Protocol::Modbus {
                    bad("transport", "tcp is for protocol = \"modbus\" only".into());
                }
                if !s.path.as_os_str().is_empty() {
                    bad("path", "not used with transport = \"tcp\" (address says where)".into());
                }
            }
            (Transport::Rtu, None) => {}
        }
        match s.protocol {
            Protocol::Csv if s.columns.is_empty() => bad(
                "columns",
                "csv needs the column names, e.g. [\"temp\", \"hum\"]".into(),
            ),
            Protocol::Kv if s.kv_separator.is_empty() || s.pair_separator.is_empty() => bad(
                "kv_separator",
                "kv_separator and pair_separator must not be empty".into(),
            ),
            Protocol::Csv if s.csv_separator.is_empty() => {
                bad("csv_separator", "must not be empty".into())
            }
            Protocol::Modbus if s.slave.is_empty() => bad(
                "slave",
                "modbus needs at least one [[serial.slave]] with its registers".into(),
            ),
            Protocol::Json | Protocol::Kv | Protocol::Csv if !s.slave.is_empty() => bad(
                "slave",
                format!(
                    "slaves are only polled with protocol = \"modbus\", not {:?}",
                    s.protocol
                )
                .to_lowercase(),
            ),
            _ => {}
        }
        if s.protocol == Protocol::Modbus && !(s.commands.is_empty() && s.attributes.is_empty()) {
            bad(
                "commands",
                "modbus ports are written through writable registers, not command lines".into(),
            );
        }
        let mut ids = BTreeMap::new();
        for (j, slave) in s.slave.iter().enumerate() {
            let at = |k: &str| format!("serial[{i}].slave[{j}].{k}");
            let mut bad = |k: &str, message: String| {
                problems.push(Problem {
                    path: at(k),
                    message,
                })
            };
            if !(1..=247).contains(&slave.id) {
                bad("id", "a Modbus slave address is 1..=247".into());
            }
            if let Some(first) = ids.insert(slave.id, j) {
                bad("id", format!("slave[{first}] has the same address"));
            }
            if slave.device.is_empty() || slave.device.contains(['/', '+', '#']) {
                bad(
                    "device",
                    "must be a non-empty name without `/`, `+`, `#`".into(),
                );
            }
            if slave.interval.0 < Duration::from_millis(10) {
                bad("interval", "must be at least 10ms".into());
            }
            if slave.timeout.0.is_zero() {
                bad("timeout", "must be above 0".into());
            }
            if slave.register.is_empty() {
                bad(
                    "register",
                    "list at least one [[serial.slave.register]]".into(),
                );
            }
            let mut keys = BTreeMap::new();
            for (k, r) in slave.register.iter().enumerate() {
                let at = format!("serial[{i}].slave[{j}].register[{k}]");
                let bits = matches!(r.table, Table::Coil | Table::Discrete);
                if bits != (r.ty == RegisterType::Bool) {
                    problems.push(Problem {
                        path: format!("{at}.type"),
                        message: if bits {
                            "coils and discrete inputs are `bool`".into()
                        } else {
                            "`bool` is for coils and discrete inputs; registers are u16, i16, u32, i32 or f32".into()
                        },
                    });
                }
                if r.writable && matches!(r.table, Table::Input | Table::Discrete) {
                    problems.push(Problem {
                        path: format!("{at}.writable"),
                        message: "input registers and discrete inputs are read-only".into(),
                    });
                }
                if !r.scale.is_finite() || r.scale == 0.0 || !r.offset.is_finite() {
                    problems.push(Problem {
                        path: format!("{at}.scale"),
                        message: "scale must be a non-zero number and offset a number".into(),
                    });
                }
                if r.address
                    .checked_add(r.ty.width().saturating_sub(1))
                    .is_none()
                {
                    problems.push(Problem {
                        path: format!("{at}.address"),
                        message: "the value runs past register 65535".into(),
                    });
                }
                if let Some(first) = keys.insert(r.key.clone(), k) {
                    problems.push(Problem {
                        path: format!("{at}.key"),
                        message: format!("register[{first}] has the same key"),
                    });
                }
            }
        }
    }
}

/// A serial topic names its device with `{device}`.
fn check_topic_template(t: &str) -> Result<(), String> {
    if t.is_empty() || t.contains(['+', '#']) {
        return Err("must be a topic name without wildcards".into());
    }
    for key in crate::topic::placeholders(t)? {
        if key != "device" && key != "port" {
            return Err(format!(
                "unknown placeholder `{{{key}}}` (known: {{device}}, {{port}})"
            ));
        }
    }
    Ok(())
}
