//! A Terraform number that survives a round trip unchanged.
//!
//! Terraform sends a number as a msgpack integer, a float64 when the value is
//! exactly a float64, and otherwise as a decimal *string* (this is how a
//! fractional value read back from the JSON state arrives). Decoding into an
//! `f64` would fail on the string, and re-encoding a parsed float would change
//! the value Terraform compares against, so the original form is kept.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number as Terraform encoded it, or as the controller reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    /// A float64.
    Float(f64),
    /// A decimal that is not exactly a float64, kept verbatim.
    Decimal(String),
}

impl Default for Number {
    fn default() -> Self {
        Number::Unsigned(0)
    }
}

impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Number::Unsigned(value)
    }
}

impl From<u32> for Number {
    fn from(value: u32) -> Self {
        Number::Unsigned(u64::from(value))
    }
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        // Integral values go out as integers, as Terraform itself encodes them.
        if value.fract() == 0.0 && value >= 0.0 && value < u64::MAX as f64 {
            Number::Unsigned(value as u64)
        } else {
            Number::Float(value)
        }
    }
}

impl Number {
    /// The value as a non-negative whole number, if it is one.
    pub fn as_whole(&self) -> Option<u64> {
        match self {
            Number::Unsigned(v) => Some(*v),
            Number::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64 => {
                Some(*f as u64)
            }
            Number::Decimal(text) => text.parse().ok(),
            _ => None,
        }
    }

    /// The value as a float64; `None` for a decimal that does not parse.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Number::Unsigned(value) => Some(*value as f64),
            Number::Signed(value) => Some(*value as f64),
            Number::Float(value) => Some(*value),
            Number::Decimal(text) => text.parse().ok(),
        }
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Number::Unsigned(v) => serializer.serialize_u64(*v),
            Number::Signed(v) => serializer.serialize_i64(*v),
            Number::Float(v) => serializer.serialize_f64(*v),
            Number::Decimal(v) => serializer.serialize_str(v),
        }
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number (integer, float or decimal string)")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(u64::try_from(v)
            .map(Number::Unsigned)
            .unwrap_or(Number::Signed(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number::Float(v))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Number, E> {
        Ok(Number::Float(f64::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        if v.parse::<f64>().is_err() {
            return Err(E::custom(format!("{v:?} is not a number")));
        }
        Ok(Number::Decimal(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Number, E> {
        self.visit_str(&v)
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> Vec<u8> {
        let number: Number = rmp_serde::from_slice(bytes).expect("decode");
        rmp_serde::to_vec(&number).expect("encode")
    }

    #[test]
    fn keeps_every_encoding_terraform_uses() {
        for number in [
            Number::Unsigned(270_553_174_016),
            Number::Signed(-3),
            Number::Float(67.5),
            Number::Decimal("67.82828851876644".into()),
        ] {
            let bytes = rmp_serde::to_vec(&number).expect("encode");
            assert_eq!(round_trip(&bytes), bytes, "{number:?}");
        }
    }

    #[test]
    fn rejects_text_that_is_not_a_number() {
        let bytes = rmp_serde::to_vec("high").expect("encode");
        assert!(rmp_serde::from_slice::<Number>(&bytes).is_err());
    }

    #[test]
    fn integral_floats_become_integers() {
        assert_eq!(Number::from(100.0), Number::Unsigned(100));
        assert_eq!(Number::from(12.5), Number::Float(12.5));
    }
}
