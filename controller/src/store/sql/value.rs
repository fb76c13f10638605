//! The values both backends exchange, and the conversions between them and
//! the Rust types the store binds and reads.
//!
//! Narrowing is checked both ways: a `u64` above `i64::MAX` is refused when
//! bound, and an `Integer` that does not fit the requested type is refused
//! when read, instead of wrapping silently.

/// One SQL value as both backends exchange it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// The value's SQL type and, for integers, the value itself: what a
    /// conversion error shows as "found".
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => format!("INTEGER {i}"),
            Value::Real(r) => format!("REAL {r}"),
            Value::Text(_) => "TEXT".into(),
            Value::Blob(_) => "BLOB".into(),
        }
    }
}

/// A value of the wrong type or out of range for the Rust side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mismatch {
    /// The Rust type wanted.
    pub expected: &'static str,
    /// What was there instead ([`Value::describe`], or the bound value).
    pub found: String,
}

impl Mismatch {
    fn new(expected: &'static str, found: impl Into<String>) -> Self {
        Mismatch {
            expected,
            found: found.into(),
        }
    }
}

/// A Rust value that can be bound as a statement parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Result<Value, Mismatch>;
}

/// A Rust value that can be read from a result column.
pub(crate) trait FromValue: Sized {
    fn from_value(value: Value) -> Result<Self, Mismatch>;
}

impl ToValue for Value {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(self.clone())
    }
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        Ok(value)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<Value, Mismatch> {
        (**self).to_value()
    }
}

impl<T: ToValue + ?Sized> ToValue for Box<T> {
    fn to_value(&self) -> Result<Value, Mismatch> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<Value, Mismatch> {
        match self {
            Some(value) => value.to_value(),
            None => Ok(Value::Null),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        match value {
            Value::Null => Ok(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// Integers that always fit in an `i64`.
macro_rules! lossless_integer {
    ($($t:ty),+) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<Value, Mismatch> {
                Ok(Value::Integer(i64::from(*self)))
            }
        }
    )+};
}
lossless_integer!(i64, i32, u32, u16, u8);

/// Integers that may not fit in an `i64`.
macro_rules! checked_integer_in {
    ($($t:ty),+) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Result<Value, Mismatch> {
                i64::try_from(*self)
                    .map(Value::Integer)
                    .map_err(|_| Mismatch::new("a value up to i64::MAX", self.to_string()))
            }
        }
    )+};
}
checked_integer_in!(u64, usize);

/// Every integer type is read with a range check.
macro_rules! checked_integer_out {
    ($($t:ty),+) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> Result<Self, Mismatch> {
                match value {
                    Value::Integer(i) => <$t>::try_from(i)
                        .map_err(|_| Mismatch::new(stringify!($t), value.describe())),
                    other => Err(Mismatch::new(stringify!($t), other.describe())),
                }
            }
        }
    )+};
}
checked_integer_out!(i64, i32, u32, u64, u16, u8, usize);

impl ToValue for bool {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Integer(i64::from(*self)))
    }
}

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        match value {
            Value::Integer(0) => Ok(false),
            Value::Integer(1) => Ok(true),
            other => Err(Mismatch::new("bool (INTEGER 0 or 1)", other.describe())),
        }
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Real(*self))
    }
}

impl FromValue for f64 {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        match value {
            Value::Real(r) => Ok(r),
            // SQLite stores a REAL column's whole numbers as integers.
            #[allow(clippy::cast_precision_loss)]
            Value::Integer(i) => Ok(i as f64),
            other => Err(Mismatch::new("f64", other.describe())),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Text(self.to_string()))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Text(self.clone()))
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        match value {
            Value::Text(text) => Ok(text),
            other => Err(Mismatch::new("String", other.describe())),
        }
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Blob(self.to_vec()))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<Value, Mismatch> {
        Ok(Value::Blob(self.clone()))
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value) -> Result<Self, Mismatch> {
        match value {
            Value::Blob(bytes) => Ok(bytes),
            other => Err(Mismatch::new("Vec<u8>", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_values_past_i64_are_refused_when_bound() {
        assert_eq!((i64::MAX as u64).to_value(), Ok(Value::Integer(i64::MAX)));
        let refused = (i64::MAX as u64 + 1).to_value().unwrap_err();
        assert_eq!(refused.found, "9223372036854775808");
    }

    #[test]
    fn integers_out_of_range_are_refused_when_read() {
        assert_eq!(u8::from_value(Value::Integer(255)), Ok(255));
        assert_eq!(
            u8::from_value(Value::Integer(256)),
            Err(Mismatch::new("u8", "INTEGER 256"))
        );
        assert_eq!(
            u64::from_value(Value::Integer(-1)),
            Err(Mismatch::new("u64", "INTEGER -1"))
        );
        assert_eq!(
            i64::from_value(Value::Text("1".into())),
            Err(Mismatch::new("i64", "TEXT"))
        );
    }

    #[test]
    fn booleans_are_the_integers_zero_and_one_only() {
        assert_eq!(true.to_value(), Ok(Value::Integer(1)));
        assert_eq!(bool::from_value(Value::Integer(0)), Ok(false));
        assert_eq!(bool::from_value(Value::Integer(1)), Ok(true));
        assert!(bool::from_value(Value::Integer(2)).is_err());
    }

    #[test]
    fn null_reads_as_none_and_only_as_none() {
        assert_eq!(Option::<String>::from_value(Value::Null), Ok(None));
        assert_eq!(Option::<i64>::from_value(Value::Integer(3)), Ok(Some(3)));
        assert!(String::from_value(Value::Null).is_err());
        assert_eq!(None::<i64>.to_value(), Ok(Value::Null));
    }
}
