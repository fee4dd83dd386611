//! Line framing and the three line protocols (JSON, key=value, CSV).
//!
//! A UART gives bytes, not messages: a sensor that resets mid-line, a
//! baud-rate mismatch or electrical noise produce partial lines, binary junk
//! and lines that never end. The framer bounds every line; the parsers turn
//! a line into values or say why it is garbage. Neither ever fails the port.

use serde_json::{Map, Number, Value};

use crate::config::serial::{Protocol, SerialConfig};

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes until its end.
    skipping: bool,
}

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Line(Vec<u8>),
    /// A line longer than the limit (dropped).
    TooLong,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feeds bytes; returns the complete lines (without `\r\n`/`\n`) and
    /// over-long ones, in order. Empty lines are skipped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.is_empty() {
                        out.push(Frame::Line(line));
                    }
                }
                self.buf.clear();
                continue;
            }
            if self.skipping {
                continue;
            }
            if self.buf.len() >= self.max {
                self.buf.clear();
                self.skipping = true;
                out.push(Frame::TooLong);
                continue;
            }
            self.buf.push(b);
        }
        out
    }
}

/// A parsed line: its values, and its device when the line names one.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub device: Option<String>,
    pub values: Map<String, Value>,
}

/// Why a line is not a reading.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Garbage {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not a JSON object: {0}")]
    NotJsonObject(String),
    #[error("no `key{0}value` pair")]
    NoPairs(String),
    #[error("{found} columns where {expected} were configured")]
    Columns { found: usize, expected: usize },
    #[error("the device field `{0}` is empty or not a plain name")]
    BadDevice(String),
    #[error("no values")]
    Empty,
    #[error("longer than max_line")]
    TooLong,
}

/// Parses a line with the port's protocol.
pub fn parse(cfg: &SerialConfig, line: &[u8]) -> Result<Parsed, Garbage> {
    let text = std::str::from_utf8(line).map_err(|_| Garbage::NotUtf8)?;
    let text = text.trim();
    let mut values = match cfg.protocol {
        Protocol::Json => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(Garbage::NotJsonObject(format!(
                    "a JSON {}",
                    kind_of(&other)
                )))
            }
            Err(e) => return Err(Garbage::NotJsonObject(e.to_string())),
        },
        Protocol::Kv => key_values(text, &cfg.pair_separator, &cfg.kv_separator)?,
        Protocol::Csv => columns(text, &cfg.csv_separator, &cfg.columns)?,
        Protocol::Modbus => return Err(Garbage::Empty),
    };
    let device = match &cfg.device_field {
        None => None,
        Some(field) => match values.remove(field) {
            None => None,
            Some(Value::String(d)) if plain_name(&d) => Some(d),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(Garbage::BadDevice(field.clone())),
        },
    };
    if values.is_empty() {
        return Err(Garbage::Empty);
    }
    Ok(Parsed { device, values })
}

fn plain_name(d: &str) -> bool {
    !d.is_empty() && !d.contains(['/', '+', '#']) && d.chars().all(|c| !c.is_control())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `temp=21.5,hum=40` (pairs split by `pair_sep` or whitespace).
fn key_values(text: &str, pair_sep: &str, kv_sep: &str) -> Result<Map<String, Value>, Garbage> {
    let mut out = Map::new();
    for pair in text
        .split(pair_sep)
        .flat_map(str::split_whitespace)
        .filter(|p| !p.is_empty())
    {
        let Some((k, v)) = pair.split_once(kv_sep) else {
            return Err(Garbage::NoPairs(kv_sep.to_string()));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(Garbage::NoPairs(kv_sep.to_string()));
        }
        out.insert(k.to_string(), scalar(v.trim()));
    }
    if out.is_empty() {
        return Err(Garbage::NoPairs(kv_sep.to_string()));
    }
    Ok(out)
}

/// `21.5,40` named by the configured columns. An empty cell is left out.
fn columns(text: &str, sep: &str, names: &[String]) -> Result<Map<String, Value>, Garbage> {
    let cells: Vec<&str> = text.split(sep).map(str::trim).collect();
    if cells.len() != names.len() {
        return Err(Garbage::Columns {
            found: cells.len(),
            expected: names.len(),
        });
    }
    Ok(names
        .iter()
        .zip(cells)
        .filter(|(_, c)| !c.is_empty())
        .map(|(n, c)| (n.clone(), scalar(c)))
        .collect())
}

/// A number when it reads as one, `true`/`false`, else the text.
fn scalar(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s.trim_matches('"').to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(toml_text: &str) -> SerialConfig {
        toml::from_str(&format!("name = \"p\"\npath = \"/dev/null\"\n{toml_text}"))
            .expect("serial config")
    }

    fn lines(f: Vec<Frame>) -> Vec<String> {
        f.into_iter()
            .map(|f| match f {
                Frame::Line(l) => String::from_utf8_lossy(&l).into_owned(),
                Frame::TooLong => "<too long>".into(),
            })
            .collect()
    }

    #[test]
    fn framer_joins_partial_reads_and_bounds_lines() {
        let mut f = Framer::new(16);
        assert!(f.push(b"{\"t\":").is_empty());
        assert_eq!(
            lines(f.push(b"1}\r\n\n{\"t\":2}\n")),
            ["{\"t\":1}", "{\"t\":2}"]
        );
        // 40 bytes without a newline: reported once, then dropped to its end.
        assert_eq!(lines(f.push(&[b'x'; 40])), ["<too long>"]);
        assert!(f.push(&[b'y'; 40]).is_empty());
        assert_eq!(lines(f.push(b"zz\nok=1\n")), ["ok=1"]);
    }

    #[test]
    fn json_lines_with_a_device_field() {
        let c = cfg("protocol = \"json\"\ndevice_field = \"id\"");
        let p = parse(&c, br#"{"id":"soil-2","moisture":31.5,"ok":true}"#).expect("parse");
        assert_eq!(p.device.as_deref(), Some("soil-2"));
        assert_eq!(Value::Object(p.values), json!({"moisture":31.5,"ok":true}));
        let p = parse(&c, br#"{"moisture":1}"#).expect("no device field");
        assert_eq!(p.device, None);
        assert!(matches!(
            parse(&c, b"[1,2]"),
            Err(Garbage::NotJsonObject(_))
        ));
        assert!(matches!(
            parse(&c, b"{\"moisture\":"),
            Err(Garbage::NotJsonObject(_))
        ));
        assert_eq!(parse(&c, b"\xff\xfe{}"), Err(Garbage::NotUtf8));
        assert_eq!(
            parse(&c, br#"{"id":"a/b","t":1}"#),
            Err(Garbage::BadDevice("id".into()))
        );
        assert_eq!(parse(&c, br#"{"id":"x"}"#), Err(Garbage::Empty));
    }

    #[test]
    fn key_value_lines_with_custom_separators() {
        let c = cfg("protocol = \"kv\"");
        let p = parse(&c, b"temp=21.5,hum=40 state=open").expect("parse");
        assert_eq!(
            Value::Object(p.values),
            json!({"temp":21.5,"hum":40,"state":"open"})
        );
        let c = cfg("protocol = \"kv\"\npair_separator = \";\"\nkv_separator = \":\"\ndevice_field = \"dev\"");
        let p = parse(&c, b"dev:tank-1; level:0.82").expect("parse");
        assert_eq!(p.device.as_deref(), Some("tank-1"));
        assert_eq!(Value::Object(p.values), json!({"level":0.82}));
        assert_eq!(parse(&c, b"hello world"), Err(Garbage::NoPairs(":".into())));
    }

    #[test]
    fn csv_lines_by_column() {
        let c = cfg("protocol = \"csv\"\ncolumns = [\"device\", \"temp\", \"hum\"]\ndevice_field = \"device\"");
        let p = parse(&c, b"gh-3, 19.25 ,55").expect("parse");
        assert_eq!(p.device.as_deref(), Some("gh-3"));
        assert_eq!(Value::Object(p.values), json!({"temp":19.25,"hum":55}));
        assert_eq!(
            parse(&c, b"gh-3,19.25"),
            Err(Garbage::Columns {
                found: 2,
                expected: 3
            })
        );
        let p = parse(&c, b"gh-3,,55").expect("an empty cell is left out");
        assert_eq!(Value::Object(p.values), json!({"hum":55}));
    }
}
