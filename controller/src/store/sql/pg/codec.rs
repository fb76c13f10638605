//! [`Value`]s to and from PostgreSQL's typed wire values.
//!
//! SQLite is dynamically typed and PostgreSQL is not, so a parameter is
//! encoded by the type the server inferred for it when the statement was
//! prepared, and a column is decoded by the type the server reports:
//!
//! | Value   | parameter types accepted                                   |
//! |---------|------------------------------------------------------------|
//! | Null    | any                                                        |
//! | Integer | INT2, INT4 (range-checked), INT8, FLOAT4/FLOAT8 (exact only), BOOL (0/1), NUMERIC |
//! | Real    | FLOAT4, FLOAT8                                             |
//! | Text    | TEXT, VARCHAR, BPCHAR, NAME, and untyped (`SELECT ?1`)     |
//! | Blob    | BYTEA                                                      |
//!
//! Anything else (JSON, UUID, timestamps...) is refused with the parameter's
//! number: the schema keeps SQLite's TEXT for those, so the store never needs
//! them. Integer to TEXT is refused too rather than silently turned into
//! digits, which would compare as text.
//!
//! Columns decode from INT2/4/8, FLOAT4/8, BOOL (to 0/1), TEXT, VARCHAR,
//! BPCHAR, NAME, BYTEA, OID, VOID (a function returning nothing, as NULL) and
//! NUMERIC, which is what PostgreSQL's SUM and AVG return over BIGINT where
//! SQLite returns an integer or a real: a NUMERIC with no fraction digits
//! that fits becomes Integer, any other Real.

use std::error::Error as StdError;

use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::Row;

use super::super::value::Value;

type BoxError = Box<dyn StdError + Sync + Send>;

/// One parameter, already converted to the Rust type matching its SQL type.
#[derive(Debug)]
pub(crate) enum Param<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Numeric(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// `value` as a parameter of SQL type `ty`, or why it cannot be one.
pub(crate) fn encode<'a>(value: &'a Value, ty: &Type) -> Result<Param<'a>, String> {
    let refuse = |what: &str| format!("{what} cannot be sent as {}", ty.name());
    match value {
        Value::Null => Ok(Param::Null),
        Value::Integer(i) => {
            let i = *i;
            match *ty {
                Type::INT8 => Ok(Param::I64(i)),
                Type::INT4 => i32::try_from(i)
                    .map(Param::I32)
                    .map_err(|_| format!("{i} is out of range for int4")),
                Type::INT2 => i16::try_from(i)
                    .map(Param::I16)
                    .map_err(|_| format!("{i} is out of range for int2")),
                Type::FLOAT8 if (i as f64) as i64 == i => Ok(Param::F64(i as f64)),
                Type::FLOAT4 if (i as f32) as i64 == i => Ok(Param::F32(i as f32)),
                Type::FLOAT8 | Type::FLOAT4 => Err(format!("{i} has no exact {} value", ty.name())),
                Type::BOOL => match i {
                    0 => Ok(Param::Bool(false)),
                    1 => Ok(Param::Bool(true)),
                    _ => Err(format!("{i} is not a boolean (0 or 1)")),
                },
                Type::NUMERIC => Ok(Param::Numeric(i)),
                _ => Err(refuse("an integer")),
            }
        }
        Value::Real(f) => match *ty {
            Type::FLOAT8 => Ok(Param::F64(*f)),
            Type::FLOAT4 => Ok(Param::F32(*f as f32)),
            _ => Err(refuse("a real")),
        },
        Value::Text(s) => match *ty {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Ok(Param::Text(s))
            }
            _ => Err(refuse("text")),
        },
        Value::Blob(b) => match *ty {
            Type::BYTEA => Ok(Param::Bytes(b)),
            _ => Err(refuse("a blob")),
        },
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Bool(v) => v.to_sql(ty, out),
            Param::I16(v) => v.to_sql(ty, out),
            Param::I32(v) => v.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F32(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Numeric(v) => {
                write_numeric(*v, out);
                Ok(IsNull::No)
            }
            // TEXT's binary form is the UTF-8 bytes for every text-like type
            // (and for an untyped parameter, which the server reads as text).
            Param::Text(v) => {
                out.extend_from_slice(v.as_bytes());
                Ok(IsNull::No)
            }
            Param::Bytes(v) => v.to_sql(ty, out),
        }
    }

    // encode() already matched the value to the type.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Base of NUMERIC's binary digits.
const NBASE: i128 = 10_000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// NUMERIC's binary form of an integer: digit count, weight (power of NBASE
/// of the first digit), sign, display scale, then base-10000 digits.
fn write_numeric(value: i64, out: &mut bytes::BytesMut) {
    let mut rest = i128::from(value).abs();
    let mut digits = Vec::new();
    while rest > 0 {
        digits.push((rest % NBASE) as i16);
        rest /= NBASE;
    }
    digits.reverse();
    let sign = if value < 0 { NUMERIC_NEG } else { 0 };
    let weight = digits.len().saturating_sub(1) as i16;
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
}

/// A NUMERIC read as the Value SQLite would have given (see the module doc).
struct Numeric(Value);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let word = |n: usize| -> Result<i16, BoxError> {
            raw.get(2 * n..2 * n + 2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated numeric".into())
        };
        let count = word(0)?;
        let weight = i32::from(word(1)?);
        let sign = word(2)? as u16;
        let scale = word(3)?;
        if sign == NUMERIC_NAN {
            return Ok(Numeric(Value::Real(f64::NAN)));
        }
        if sign != 0 && sign != NUMERIC_NEG {
            return Ok(Numeric(Value::Real(if sign & 0x2000 == 0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            })));
        }
        let digits = (0..count.max(0) as usize)
            .map(|n| word(4 + n))
            .collect::<Result<Vec<_>, _>>()?;
        let negative = sign == NUMERIC_NEG;
        // Digit n stands for digit * NBASE^(weight - n).
        let integral = digits
            .iter()
            .enumerate()
            .all(|(n, &d)| d == 0 || weight - n as i32 >= 0);
        if scale == 0 && integral {
            let mut total: Option<i128> = Some(0);
            for (n, &d) in digits.iter().enumerate() {
                let power = u32::try_from(weight - n as i32).unwrap_or(0);
                total = total.and_then(|t| {
                    NBASE
                        .checked_pow(power)
                        .and_then(|p| t.checked_add(i128::from(d) * p))
                });
            }
            if let Some(total) = total.map(|t| if negative { -t } else { t }) {
                if let Ok(int) = i64::try_from(total) {
                    return Ok(Numeric(Value::Integer(int)));
                }
            }
        }
        // Through decimal text, which Rust's parser rounds correctly; summing
        // digit * 10000^k in f64 would round at every step.
        let mantissa: String = digits.iter().map(|d| format!("{d:04}")).collect();
        let exponent = 4 * (weight - (digits.len() as i32 - 1));
        let sign = if negative { "-" } else { "" };
        let real: f64 = format!("{sign}0{mantissa}e{exponent}").parse()?;
        Ok(Numeric(Value::Real(real)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// Column `index` of `row` as a Value, or why it has none.
pub(crate) fn decode(row: &Row, index: usize) -> Result<Value, String> {
    let ty = row.columns()[index].type_();
    let value = match *ty {
        Type::INT2 => get::<i16>(row, index)?.map(|v| Value::Integer(v.into())),
        Type::INT4 => get::<i32>(row, index)?.map(|v| Value::Integer(v.into())),
        Type::INT8 => get::<i64>(row, index)?.map(Value::Integer),
        Type::OID => get::<u32>(row, index)?.map(|v| Value::Integer(v.into())),
        Type::FLOAT4 => get::<f32>(row, index)?.map(|v| Value::Real(v.into())),
        Type::FLOAT8 => get::<f64>(row, index)?.map(Value::Real),
        Type::BOOL => get::<bool>(row, index)?.map(|v| Value::Integer(v.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            get::<String>(row, index)?.map(Value::Text)
        }
        Type::BYTEA => get::<Vec<u8>>(row, index)?.map(Value::Blob),
        Type::NUMERIC => get::<Numeric>(row, index)?.map(|n| n.0),
        Type::VOID => None,
        _ => {
            return Err(format!(
                "type {} has no SQLite counterpart; cast it in the query (e.g. ::text)",
                ty.name()
            ))
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<Option<T>, String> {
    row.try_get::<_, Option<T>>(index).map_err(|err| {
        let mut text = err.to_string();
        if let Some(cause) = err.source() {
            text.push_str(&format!(": {cause}"));
        }
        text
    })
}
