//! The `timeouts` block and Go-style duration strings (`"90s"`, `"5m"`, `"1h30m"`),
//! the format Terraform users already write for every other provider.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tf_provider::map;
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock,
};
use tf_provider::value::Value;

/// Default for `timeouts.create`: a lab node registers within seconds, a real
/// node after a reboot can take minutes.
pub const DEFAULT_CREATE: Duration = Duration::from_secs(5 * 60);

/// Errors from parsing a duration string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeoutsError {
    /// The string is empty.
    #[error("the duration is empty; write it like \"30s\", \"5m\" or \"1h30m\"")]
    Empty,
    /// A number is missing its unit or the unit is unknown.
    #[error(
        "{0:?} is not a duration; write it like \"30s\", \"5m\" or \"1h30m\" (units: s, m, h)"
    )]
    Malformed(String),
    /// Zero would make every operation time out at once.
    #[error("the duration must be longer than zero")]
    Zero,
}

/// State of the `timeouts` block (a group block: always present, attributes null when unset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeouts {
    /// How long create waits for the object to be ready.
    pub create: Value<String>,
}

impl Timeouts {
    /// The create timeout, or the default when unset.
    pub fn create(&self) -> Result<Duration, TimeoutsError> {
        match &self.create {
            Value::Value(text) => parse_duration(text),
            _ => Ok(DEFAULT_CREATE),
        }
    }
}

/// Schema of the `timeouts` block. A group block, because `NestedBlock::Single`
/// would make the block required in tf-provider 0.2.2.
pub fn block(create_what: &str) -> (String, NestedBlock) {
    let block = Block {
        description: Description::markdown("Limits on how long operations may take."),
        attributes: map! {
            "create" => Attribute {
                attr_type: AttributeType::String,
                description: Description::markdown(format!(
                    "How long create waits for {create_what}, as a duration string such as `\"90s\"`, \
                     `\"5m\"` or `\"1h\"`. Default `\"5m\"`."
                )),
                constraint: AttributeConstraint::Optional,
                ..Default::default()
            }
        },
        ..Default::default()
    };
    ("timeouts".to_string(), NestedBlock::Group(block))
}

/// Parse a Go-style duration: a sequence of `<integer><unit>` with units h, m, s.
pub fn parse_duration(text: &str) -> Result<Duration, TimeoutsError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TimeoutsError::Empty);
    }
    let malformed = || TimeoutsError::Malformed(text.to_string());
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(malformed()),
        };
        let count: u64 = digits.parse().map_err(|_| malformed())?;
        total = count
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(malformed)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(malformed());
    }
    if total == 0 {
        return Err(TimeoutsError::Zero);
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2m10s "), Ok(Duration::from_secs(130)));
    }

    #[test]
    fn rejects_what_go_would_reject() {
        assert!(matches!(
            parse_duration("5"),
            Err(TimeoutsError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("5 minutes"),
            Err(TimeoutsError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("m"),
            Err(TimeoutsError::Malformed(_))
        ));
        assert_eq!(parse_duration(""), Err(TimeoutsError::Empty));
        assert_eq!(parse_duration("0s"), Err(TimeoutsError::Zero));
    }

    #[test]
    fn unset_means_default() {
        assert_eq!(Timeouts::default().create(), Ok(DEFAULT_CREATE));
    }
}
