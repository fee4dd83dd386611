//! A reading's values as ThingsBoard stores them. The rules are those of
//! the server's `JsonConverter.parseProtoValues` and
//! `buildNumericKeyValueProto` (thingsboard/thingsboard,
//! `common/proto/.../adaptor/JsonConverter.java`), which every telemetry
//! and attribute message goes through:
//!
//! - a `null` value is skipped; the other keys of the reading are kept;
//! - a number is read as a `BigDecimal` from its text: a whole number
//!   written without a decimal point is a long if it fits in 64 signed
//!   bits and otherwise its digits as a string; a number with a fraction
//!   of at most 16 digits is a double, with more its digits as a string.
//!
//! serde_json reads a number that does not fit in 64 bits as the nearest
//! double, which loses digits the server would have kept. So where the
//! text may hold such a number, it is read again from the raw text and
//! sent as the server would store it.

use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::encode::key_values;

/// The fraction digits ThingsBoard keeps in a double
/// (`buildNumericKeyValueProto`: `bd.scale() <= 16`).
const MAX_DOUBLE_SCALE: i64 = 16;

/// The values of a telemetry or attributes reading as ThingsBoard keeps
/// them: nulls left out, numbers as the server would read their text.
pub(super) fn data_points(payload: &[u8]) -> Map<String, Value> {
    let mut values = key_values(payload);
    values.retain(|_, v| !v.is_null());
    if may_lose_digits(payload) {
        if let Some(raw) = raw_values(payload) {
            for (k, v) in values.iter_mut() {
                if v.is_number() {
                    if let Some(stored) = raw.get(k).and_then(Value::as_str).and_then(as_stored) {
                        *v = stored;
                    }
                }
            }
        }
    }
    values
}

/// True when every value of a reading is `null`: ThingsBoard would store
/// nothing of it.
pub(super) fn all_null(payload: &[u8]) -> bool {
    let values = key_values(payload);
    !values.is_empty() && values.values().all(Value::is_null)
}

/// Whether the payload has a number serde_json may have rounded: one with
/// an exponent, or with 16 or more digits in a row.
fn may_lose_digits(payload: &[u8]) -> bool {
    let mut run = 0usize;
    let mut prev_digit = false;
    for &b in payload {
        if b.is_ascii_digit() {
            run = run.saturating_add(1);
            if run >= 16 {
                return true;
            }
            prev_digit = true;
        } else {
            if prev_digit && (b == b'e' || b == b'E') {
                return true;
            }
            run = 0;
            prev_digit = false;
        }
    }
    false
}

/// The raw text of each value, found where [`crate::record::Reading::parse`]
/// finds the values: inside `values` when the object is `ts` and `values`
/// alone, else the object itself.
fn raw_values(payload: &[u8]) -> Option<Map<String, Value>> {
    let Ok(top) =
        serde_json::from_slice::<std::collections::BTreeMap<String, Box<RawValue>>>(payload)
    else {
        // A bare number is the value of `value` (see `key_values`).
        let raw: Box<RawValue> = serde_json::from_slice(payload).ok()?;
        let mut m = Map::new();
        m.insert("value".into(), Value::String(raw.get().to_string()));
        return Some(m);
    };
    let nested = top.len() == 2
        && top.get("ts").is_some_and(|t| {
            t.get()
                .bytes()
                .next()
                .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        });
    let chosen: std::collections::BTreeMap<String, Box<RawValue>> = match top.get("values") {
        Some(inner) if nested => serde_json::from_str(inner.get()).ok()?,
        _ => top,
    };
    Some(
        chosen
            .into_iter()
            .map(|(k, v)| (k, Value::String(v.get().to_string())))
            .collect(),
    )
}

/// A JSON number's text as ThingsBoard stores it (`None`: not a number).
pub(super) fn as_stored(text: &str) -> Option<Value> {
    let d = Decimal::parse(text)?;
    let simple_double = text.contains('.') && !text.contains(['e', 'E']);
    if d.is_whole() && !simple_double {
        return Some(match d.to_i64() {
            Some(n) => Value::from(n),
            None => Value::String(d.plain()),
        });
    }
    if d.scale <= MAX_DOUBLE_SCALE {
        let f: f64 = text.parse().ok()?;
        return Number::from_f64(f).map(Value::Number);
    }
    Some(Value::String(d.plain()))
}

/// A decimal as Java's `BigDecimal` holds it: an unscaled integer (its
/// digits, no leading zeros) and a scale (the value is `digits × 10^-scale`).
struct Decimal {
    negative: bool,
    digits: String,
    scale: i64,
}

impl Decimal {
    /// Parses JSON number text: `-?int(.frac)?([eE][+-]?exp)?`.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (
                rest.get(..i)?,
                rest.get(i.checked_add(1)?..)?.parse::<i64>().ok()?,
            ),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all: String = int.chars().chain(frac.chars()).collect();
        let trimmed = all.trim_start_matches('0');
        let digits = if trimmed.is_empty() { "0" } else { trimmed }.to_string();
        let frac_len = i64::try_from(frac.len()).ok()?;
        Some(Decimal {
            negative,
            digits,
            scale: frac_len.checked_sub(exp)?,
        })
    }

    /// `stripTrailingZeros().scale() <= 0`.
    fn is_whole(&self) -> bool {
        if self.digits == "0" {
            return true;
        }
        let zeros = self
            .digits
            .len()
            .saturating_sub(self.digits.trim_end_matches('0').len());
        i64::try_from(zeros).is_ok_and(|z| self.scale <= z)
    }

    /// `longValueExact()`, for a whole number.
    fn to_i64(&self) -> Option<i64> {
        let text = self.plain();
        let whole = text.split('.').next()?;
        whole.parse().ok()
    }

    /// `toPlainString()`: the digits with the point where the scale puts
    /// it, never an exponent.
    fn plain(&self) -> String {
        let sign = if self.negative && self.digits != "0" {
            "-"
        } else {
            ""
        };
        if self.scale <= 0 {
            let zeros = usize::try_from(self.scale.unsigned_abs()).unwrap_or(0);
            if self.digits == "0" {
                return "0".to_string();
            }
            return format!("{sign}{}{}", self.digits, "0".repeat(zeros));
        }
        let scale = usize::try_from(self.scale).unwrap_or(usize::MAX);
        let width = scale.saturating_add(1).max(self.digits.len());
        let padded = format!("{:0>width$}", self.digits);
        let point = width.saturating_sub(scale);
        let (int, frac) = padded.split_at(point);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_stored_as_the_servers_big_decimal_reads_them() {
        // Whole numbers: a long while they fit, else their digits.
        assert_eq!(as_stored("42"), Some(json!(42)));
        assert_eq!(as_stored("-9223372036854775808"), Some(json!(i64::MIN)));
        assert_eq!(
            as_stored("9223372036854775808"),
            Some(json!("9223372036854775808"))
        );
        assert_eq!(
            as_stored("123456789012345678901234567890"),
            Some(json!("123456789012345678901234567890"))
        );
        assert_eq!(as_stored("1e3"), Some(json!(1000)));
        assert_eq!(as_stored("1.5E2"), Some(json!(150)));
        assert_eq!(as_stored("1e21"), Some(json!("1000000000000000000000")));
        // A decimal point without an exponent is a double.
        assert_eq!(as_stored("21.5"), Some(json!(21.5)));
        assert_eq!(as_stored("1000.0"), Some(json!(1000.0)));
        // More than 16 fraction digits: the digits, as a string.
        assert_eq!(
            as_stored("0.12345678901234567890"),
            Some(json!("0.12345678901234567890"))
        );
        assert_eq!(as_stored("1.5e-3"), Some(json!(0.0015)));
        assert_eq!(
            as_stored("-1.50e-30"),
            Some(json!("-0.00000000000000000000000000000150"))
        );
        assert_eq!(as_stored("x"), None);
    }

    #[test]
    fn a_null_value_is_left_out_and_the_rest_is_kept() {
        let v = data_points(br#"{"t":21.5,"h":null}"#);
        assert_eq!(Value::Object(v), json!({"t":21.5}));
        assert!(!all_null(br#"{"t":21.5,"h":null}"#));
        assert!(all_null(br#"{"h":null}"#));
        assert!(all_null(br#"{"ts":1700000000000,"values":{"h":null}}"#));
        assert!(!all_null(br#"{}"#));
    }

    #[test]
    fn an_integer_beyond_64_bits_keeps_its_digits_in_both_reading_forms() {
        let big = "123456789012345678901234567890";
        let flat = format!(r#"{{"count":{big},"t":1.5}}"#);
        let v = data_points(flat.as_bytes());
        assert_eq!(Value::Object(v), json!({"count": big, "t": 1.5}));
        let nested = format!(r#"{{"ts":1700000000000,"values":{{"count":{big}}}}}"#);
        let v = data_points(nested.as_bytes());
        assert_eq!(Value::Object(v), json!({"count": big}));
        // A bare number is `{"value": n}`.
        let v = data_points(big.as_bytes());
        assert_eq!(Value::Object(v), json!({"value": big}));
    }
}
