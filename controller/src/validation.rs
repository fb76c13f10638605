//! Field rules shared by the gRPC and HTTP boundaries, so a label that is
//! valid from an agent is valid from an operator too.

use std::collections::BTreeMap;

/// One field that failed validation: its path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest label value accepted; labels are for selection, not for payloads.
pub(crate) const MAX_LABEL_VALUE: usize = 256;
/// Most labels a node may carry.
pub(crate) const MAX_LABELS: usize = 64;

/// RFC 1123 label, lowercase only so that names that differ only in case
/// cannot both exist.
pub(crate) fn dns_label(field: &str, value: &str) -> Result<(), FieldError> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > 63 {
        Some(format!(
            "is {} characters long; a DNS label has at most 63",
            value.len()
        ))
    } else if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!(
            "contains {c:?}; a DNS label has only lowercase letters, digits and '-'"
        ))
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("must not start or end with '-'".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(FieldError::new(field, reason)),
        None => Ok(()),
    }
}

/// Label keys: 1-63 characters of letters, digits, '.', '_', '-', '/'.
pub(crate) fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(FieldError::new(
            field,
            format!(
                "has {} entries; at most {MAX_LABELS} are allowed",
                labels.len()
            ),
        ));
    }
    for (key, value) in labels {
        let key_field = format!("{field}.{key}");
        if key.is_empty() || key.len() > 63 {
            return Err(FieldError::new(
                key_field,
                "label key must be 1 to 63 characters long",
            ));
        }
        if let Some(c) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        {
            return Err(FieldError::new(
                key_field,
                format!(
                    "label key contains {c:?}; allowed are letters, digits, '.', '_', '-', '/'"
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(FieldError::new(
                key_field,
                format!(
                    "label value is {} bytes long; at most {MAX_LABEL_VALUE} are allowed",
                    value.len()
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(FieldError::new(
                key_field,
                "label value contains control characters",
            ));
        }
    }
    Ok(())
}

/// Free text with an upper bound and no control characters.
pub(crate) fn short_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes long; at most {max} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// A node id as issued by the controller (a UUID).
pub(crate) fn node_id(field: &str, value: &str) -> Result<(), FieldError> {
    uuid::Uuid::parse_str(value)
        .map(|_| ())
        .map_err(|e| FieldError::new(field, format!("is not a node id (UUID): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(dns_label("name", "node-1").is_ok());
        assert!(dns_label("name", "a").is_ok());
        assert_eq!(
            dns_label("name", "").unwrap_err().reason,
            "must not be empty"
        );
        assert!(dns_label("name", "Node")
            .unwrap_err()
            .reason
            .contains("'N'"));
        assert!(dns_label("name", "-a").is_err());
        assert!(dns_label("name", "a-").is_err());
        assert!(dns_label("name", "a_b").is_err());
        assert!(dns_label("name", &"a".repeat(63)).is_ok());
        assert!(dns_label("name", &"a".repeat(64))
            .unwrap_err()
            .reason
            .contains("64"));
    }

    #[test]
    fn label_rules_name_the_key() {
        let mut map = BTreeMap::new();
        map.insert("rack".to_string(), "r1".to_string());
        assert!(labels("labels", &map).is_ok());
        map.insert("bad key".to_string(), "x".to_string());
        assert_eq!(labels("labels", &map).unwrap_err().field, "labels.bad key");
        let mut long = BTreeMap::new();
        long.insert("k".to_string(), "v".repeat(MAX_LABEL_VALUE + 1));
        assert_eq!(labels("labels", &long).unwrap_err().field, "labels.k");
    }

    #[test]
    fn node_ids_are_uuids() {
        assert!(node_id("node_id", &uuid::Uuid::new_v4().to_string()).is_ok());
        assert!(node_id("node_id", "n1").is_err());
    }
}
