//! Label validation, done at plan time so a bad label is reported against the
//! exact map key before anything is sent to the controller. The rules mirror
//! the controller's (controller/src/validation.rs), which checks them again.

use std::collections::BTreeMap;

use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use crate::diagnostics;

/// Longest label key accepted.
pub const MAX_KEY_LEN: usize = 63;
/// Longest label value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 256;
/// Most labels on one node.
pub const MAX_LABELS: usize = 64;

/// Errors in one label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelsError {
    /// Key empty or too long.
    #[error("label key {0:?} must be 1 to 63 characters long")]
    KeyLength(String),
    /// Key has a character outside the allowed set.
    #[error("label key {0:?} may only contain letters, digits, '.', '_', '-' and '/'")]
    KeyCharacters(String),
    /// Value too long.
    #[error("the value of label {0:?} must be at most 256 bytes long")]
    ValueLength(String),
    /// Value has control characters.
    #[error("the value of label {0:?} contains control characters")]
    ValueCharacters(String),
    /// Value is null.
    #[error("the value of label {0:?} is null; remove the label instead")]
    ValueNull(String),
}

/// Check one label.
pub fn check(key: &str, value: &str) -> Result<(), LabelsError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(LabelsError::KeyLength(key.to_string()));
    }
    let key_chars = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !key_chars {
        return Err(LabelsError::KeyCharacters(key.to_string()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(LabelsError::ValueLength(key.to_string()));
    }
    if value.chars().any(char::is_control) {
        return Err(LabelsError::ValueCharacters(key.to_string()));
    }
    Ok(())
}

/// Validate a `labels` map from configuration; unknown values are skipped
/// (they are checked again at apply). Reports one diagnostic per bad label.
pub fn validate(
    diags: &mut Diagnostics,
    attribute: &'static str,
    labels: &Value<BTreeMap<String, Value<String>>>,
) {
    let Value::Value(map) = labels else { return };
    if map.len() > MAX_LABELS {
        diagnostics::invalid_value(
            diags,
            AttributePath::new(attribute),
            "Too many labels",
            format!(
                "{} labels are set; a node carries at most {MAX_LABELS}.",
                map.len()
            ),
        );
    }
    for (key, value) in map {
        let result = match value {
            Value::Value(value) => check(key, value),
            Value::Null => Err(LabelsError::ValueNull(key.clone())),
            Value::Unknown => continue,
        };
        if let Err(err) = result {
            diagnostics::invalid_value(
                diags,
                AttributePath::new(attribute).key(key.clone()),
                "Invalid label",
                format!("{err}.\n\nWhat to do: rename or remove the label."),
            );
        }
    }
}

/// Turn a validated, fully known `labels` value into a plain map (null means no labels).
pub fn known(labels: &Value<BTreeMap<String, Value<String>>>) -> BTreeMap<String, String> {
    match labels {
        Value::Value(map) => map
            .iter()
            .filter_map(|(k, v)| v.as_ref_option().map(|v| (k.clone(), v.clone())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_labels() {
        assert_eq!(check("rack", "r1"), Ok(()));
        assert_eq!(check("measurelab.local/role", "mscs"), Ok(()));
        assert_eq!(check("site", ""), Ok(()));
    }

    #[test]
    fn rejects_bad_labels() {
        assert!(matches!(check("", "x"), Err(LabelsError::KeyLength(_))));
        assert!(matches!(
            check("bad key", "x"),
            Err(LabelsError::KeyCharacters(_))
        ));
        assert!(matches!(
            check("k=v", "x"),
            Err(LabelsError::KeyCharacters(_))
        ));
        assert!(matches!(
            check(&"k".repeat(64), "x"),
            Err(LabelsError::KeyLength(_))
        ));
        assert!(matches!(
            check("k", "a\nb"),
            Err(LabelsError::ValueCharacters(_))
        ));
        assert!(matches!(
            check("k", &"v".repeat(257)),
            Err(LabelsError::ValueLength(_))
        ));
        assert_eq!(check("k", "a value with spaces"), Ok(()));
    }

    #[test]
    fn validate_points_at_the_key() {
        let mut diags = Diagnostics::default();
        let labels = Value::Value(BTreeMap::from([
            ("good".to_string(), Value::Value("yes".to_string())),
            ("bad key".to_string(), Value::Value("x".to_string())),
        ]));
        validate(&mut diags, "labels", &labels);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("labels").key("bad key")
        );
    }
}
