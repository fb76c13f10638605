mod value;
pub(crate) use value::Value;
pub(crate) mod pg;
