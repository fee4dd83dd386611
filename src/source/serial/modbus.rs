//! Modbus polling, over RTU or TCP: one bus (or connection), several
//! slaves (unit ids), polled in turn.
//!
//! Only one request is on the wire at a time (RTU has no transaction ids;
//! over TCP it keeps a slow gateway from being flooded),
//! so the bus is owned by one task that polls each slave when it is due and
//! runs writes (RPC, shared attributes) between polls. A silent slave costs
//! its timeout × attempts and nothing more: the others keep their rhythm.

use std::time::Duration;

use serde_json::{Map, Number, Value};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};

use crate::config::serial::{RegisterConfig, RegisterType, SlaveConfig, Table, WordOrder};

/// How one request went.
#[derive(Debug, PartialEq)]
pub enum Outcome<T> {
    Ok(T),
    /// The slave answered with a Modbus exception (e.g. illegal address).
    Exception(String),
    /// No (valid) answer within the timeout, after every attempt.
    Timeout,
    /// The port failed: the caller reopens it.
    PortError(String),
}

/// Raw words or bits read for one register entry.
enum Raw {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Reads every register of `slave`. Values that read fine are returned
/// even when others failed; the worst failure is returned beside them.
pub async fn poll(
    ctx: &mut Context,
    slave: &SlaveConfig,
) -> (Map<String, Value>, Option<Outcome<()>>) {
    ctx.set_slave(Slave(slave.id));
    let mut values = Map::new();
    let mut failure = None;
    for r in &slave.register {
        match read(ctx, slave, r).await {
            Outcome::Ok(raw) => {
                if let Some(v) = decode(r, &raw) {
                    values.insert(r.key.clone(), v);
                }
            }
            Outcome::PortError(e) => return (values, Some(Outcome::PortError(e))),
            Outcome::Timeout => {
                // A silent slave: do not spend a timeout on each register.
                return (values, Some(Outcome::Timeout));
            }
            Outcome::Exception(e) => failure = Some(Outcome::Exception(e)),
        }
    }
    (values, failure)
}

async fn read(ctx: &mut Context, slave: &SlaveConfig, r: &RegisterConfig) -> Outcome<Raw> {
    let n = r.ty.width();
    let request = match r.table {
        Table::Holding => Request::ReadHoldingRegisters(r.address, n),
        Table::Input => Request::ReadInputRegisters(r.address, n),
        Table::Coil => Request::ReadCoils(r.address, 1),
        Table::Discrete => Request::ReadDiscreteInputs(r.address, 1),
    };
    match attempt(ctx, slave, request).await {
        Outcome::Ok(Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w)) => {
            Outcome::Ok(Raw::Words(w))
        }
        Outcome::Ok(Response::ReadCoils(b) | Response::ReadDiscreteInputs(b)) => {
            Outcome::Ok(Raw::Bits(b))
        }
        Outcome::Ok(other) => Outcome::Exception(format!("unexpected response {other:?}")),
        Outcome::Exception(e) => Outcome::Exception(e),
        Outcome::Timeout => Outcome::Timeout,
        Outcome::PortError(e) => Outcome::PortError(e),
    }
}

/// Writes `value` to a writable register or coil of `slave`.
pub async fn write(
    ctx: &mut Context,
    slave: &SlaveConfig,
    r: &RegisterConfig,
    value: &Value,
) -> Result<(), String> {
    let request = match encode(r, value)? {
        Encoded::Bit(b) => Request::WriteSingleCoil(r.address, b),
        Encoded::Words(w) if w.len() == 1 => {
            Request::WriteSingleRegister(r.address, w.first().copied().unwrap_or_default())
        }
        Encoded::Words(w) => Request::WriteMultipleRegisters(r.address, w.into()),
    };
    ctx.set_slave(Slave(slave.id));
    match attempt(ctx, slave, request).await {
        Outcome::Ok(_) => Ok(()),
        Outcome::Exception(e) => Err(format!("slave {} answered with exception: {e}", slave.id)),
        Outcome::Timeout => Err(format!(
            "slave {} did not answer within {}ms",
            slave.id,
            slave.timeout.0.as_millis()
        )),
        Outcome::PortError(e) => Err(format!("serial port error: {e}")),
    }
}

/// One request with the slave's timeout, retried `retries` times after a
/// timeout (not after an exception: the slave answered).
async fn attempt(
    ctx: &mut Context,
    slave: &SlaveConfig,
    request: Request<'static>,
) -> Outcome<Response> {
    for _ in 0..=slave.retries {
        match tokio::time::timeout(slave.timeout.0, ctx.call(request.clone())).await {
            Ok(Ok(Ok(v))) => return Outcome::Ok(v),
            Ok(Ok(Err(code))) => return Outcome::Exception(format!("{code:?}")),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                return Outcome::PortError(e.to_string());
            }
            // A garbled or mismatched frame counts like no answer.
            Ok(Err(tokio_modbus::Error::Protocol(_))) | Err(_) => {
                // Let late bytes of this exchange arrive before the next.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Outcome::Timeout
}

fn decode(r: &RegisterConfig, raw: &Raw) -> Option<Value> {
    let number = match (raw, r.ty) {
        (Raw::Bits(b), _) => return b.first().map(|b| Value::Bool(*b)),
        (Raw::Words(w), RegisterType::U16) => f64::from(*w.first()?),
        (Raw::Words(w), RegisterType::I16) => f64::from(*w.first()? as i16),
        (Raw::Words(w), ty) => {
            let (hi, lo) = match r.word_order {
                WordOrder::Big => (*w.first()?, *w.get(1)?),
                WordOrder::Little => (*w.get(1)?, *w.first()?),
            };
            let bits = (u32::from(hi) << 16) | u32::from(lo);
            match ty {
                RegisterType::U32 => f64::from(bits),
                RegisterType::I32 => f64::from(bits as i32),
                RegisterType::F32 => f64::from(f32::from_bits(bits)),
                _ => return None,
            }
        }
    };
    let scaled = number * r.scale + r.offset;
    let integral = r.ty != RegisterType::F32 && r.scale == 1.0 && r.offset == 0.0;
    if integral {
        return Some(Value::Number((scaled as i64).into()));
    }
    // f32 → f64 widening shows noise (21.3 → 21.299999237); keep the
    // digits an f32 actually has.
    let rounded = if r.ty == RegisterType::F32 && r.scale == 1.0 && r.offset == 0.0 {
        format!("{}", number as f32).parse().unwrap_or(scaled)
    } else {
        round_to(scaled, 9)
    };
    Number::from_f64(rounded).map(Value::Number)
}

fn round_to(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

#[derive(Debug, PartialEq)]
enum Encoded {
    Bit(bool),
    Words(Vec<u16>),
}

/// The register words for a value in engineering units (the inverse of
/// `decode`), with a clear error when it does not fit.
fn encode(r: &RegisterConfig, value: &Value) -> Result<Encoded, String> {
    if r.ty == RegisterType::Bool {
        return match value {
            Value::Bool(b) => Ok(Encoded::Bit(*b)),
            Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Encoded::Bit(n.as_u64() == Some(1)))
            }
            _ => Err(format!("`{}` takes true or false", r.key)),
        };
    }
    let x = value
        .as_f64()
        .ok_or_else(|| format!("`{}` takes a number, got {value}", r.key))?;
    let raw = (x - r.offset) / r.scale;
    let split = |bits: u32| match r.word_order {
        WordOrder::Big => vec![(bits >> 16) as u16, bits as u16],
        WordOrder::Little => vec![bits as u16, (bits >> 16) as u16],
    };
    let out_of_range = |lo: f64, hi: f64| {
        format!(
            "`{}` = {x} is raw {raw} after scale and offset, outside {lo}..={hi}",
            r.key
        )
    };
    let whole = raw.round();
    Ok(Encoded::Words(match r.ty {
        RegisterType::U16 if (0.0..=65535.0).contains(&whole) => vec![whole as u16],
        RegisterType::U16 => return Err(out_of_range(0.0, 65535.0)),
        RegisterType::I16 if (-32768.0..=32767.0).contains(&whole) => {
            vec![whole as i16 as u16]
        }
        RegisterType::I16 => return Err(out_of_range(-32768.0, 32767.0)),
        RegisterType::U32 if (0.0..=u32::MAX as f64).contains(&whole) => split(whole as u32),
        RegisterType::U32 => return Err(out_of_range(0.0, u32::MAX as f64)),
        RegisterType::I32 if (i32::MIN as f64..=i32::MAX as f64).contains(&whole) => {
            split(whole as i32 as u32)
        }
        RegisterType::I32 => return Err(out_of_range(i32::MIN as f64, i32::MAX as f64)),
        RegisterType::F32 => split((raw as f32).to_bits()),
        RegisterType::Bool => return Err(format!("`{}` takes true or false", r.key)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(ty: RegisterType, order: WordOrder, scale: f64, offset: f64) -> RegisterConfig {
        RegisterConfig {
            key: "k".into(),
            table: Table::Holding,
            address: 0,
            ty,
            word_order: order,
            scale,
            offset,
            writable: true,
        }
    }

    #[test]
    fn decodes_each_type_and_word_order() {
        let w = |v: &[u16]| Raw::Words(v.to_vec());
        let big = WordOrder::Big;
        let little = WordOrder::Little;
        assert_eq!(
            decode(&reg(RegisterType::U16, big, 1.0, 0.0), &w(&[65535])),
            Some(json!(65535))
        );
        assert_eq!(
            decode(&reg(RegisterType::I16, big, 1.0, 0.0), &w(&[65535])),
            Some(json!(-1))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::I16, big, 0.1, 0.0),
                &w(&[(-215i16) as u16])
            ),
            Some(json!(-21.5))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::U32, big, 1.0, 0.0),
                &w(&[0x0001, 0x0002])
            ),
            Some(json!(65538))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::U32, little, 1.0, 0.0),
                &w(&[0x0002, 0x0001])
            ),
            Some(json!(65538))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::I32, big, 1.0, 0.0),
                &w(&[0xFFFF, 0xFFFE])
            ),
            Some(json!(-2))
        );
        let f = 230.7f32.to_bits();
        assert_eq!(
            decode(
                &reg(RegisterType::F32, big, 1.0, 0.0),
                &w(&[(f >> 16) as u16, f as u16])
            ),
            Some(json!(230.7))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::F32, little, 1.0, 0.0),
                &w(&[f as u16, (f >> 16) as u16])
            ),
            Some(json!(230.7))
        );
        assert_eq!(
            decode(&reg(RegisterType::U16, big, 0.5, -40.0), &w(&[130])),
            Some(json!(25.0))
        );
        assert_eq!(
            decode(
                &reg(RegisterType::Bool, big, 1.0, 0.0),
                &Raw::Bits(vec![true, false])
            ),
            Some(json!(true))
        );
    }

    #[test]
    fn encodes_as_the_inverse_of_decode_and_refuses_what_does_not_fit() {
        for (ty, order, scale, offset, value) in [
            (RegisterType::U16, WordOrder::Big, 0.1, 0.0, json!(21.5)),
            (RegisterType::I16, WordOrder::Big, 1.0, 0.0, json!(-300)),
            (RegisterType::U32, WordOrder::Little, 1.0, 0.0, json!(70000)),
            (RegisterType::I32, WordOrder::Big, 0.01, 0.0, json!(-12.34)),
            (RegisterType::F32, WordOrder::Little, 1.0, 0.0, json!(1.5)),
        ] {
            let r = reg(ty, order, scale, offset);
            let Ok(Encoded::Words(words)) = encode(&r, &value) else {
                panic!("{ty:?} {value} did not encode");
            };
            assert_eq!(
                decode(&r, &Raw::Words(words)),
                Some(value.clone()),
                "{ty:?}"
            );
        }
        let r = reg(RegisterType::U16, WordOrder::Big, 1.0, 0.0);
        assert!(encode(&r, &json!(-1))
            .unwrap_err()
            .contains("outside 0..=65535"));
        assert!(encode(&r, &json!("high"))
            .unwrap_err()
            .contains("takes a number"));
        let c = RegisterConfig {
            table: Table::Coil,
            ..reg(RegisterType::Bool, WordOrder::Big, 1.0, 0.0)
        };
        assert_eq!(encode(&c, &json!(true)), Ok(Encoded::Bit(true)));
        assert!(encode(&c, &json!(7)).is_err());
    }
}
