//! The JSON error body every Shadow API answers with, and the validation error behind it.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// `{"error": "...", "field": "..."}`: what was wrong, and which input field, if one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For a lease conflict: the node that holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
            holder: None,
        }
    }
}

/// An invalid input, naming the field at fault (dotted path, e.g. `volume.kind`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<FieldError> for ErrorBody {
    fn from(e: FieldError) -> Self {
        Self {
            error: e.message,
            field: Some(e.field),
            holder: None,
        }
    }
}

/// Parses untrusted JSON, naming the field at fault (`volume.kind`, or the unknown field itself).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    // serde reads a struct from a JSON array too (by position); the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FieldError::new(
            "body",
            "invalid request body: send a JSON object ({...})",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        FieldError::new(
            field_of(&path, &msg),
            format!("invalid request body: {msg}"),
        )
    })
}

/// Picks the field a serde error is about: the unknown or missing field's own name when named.
fn field_of(path: &str, msg: &str) -> String {
    // "." is the top level; "?" is where a syntax error left the parser: the body as a whole.
    let base = if path == "." || path == "?" { "" } else { path };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| msg.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (base, named) {
        // serde_path_to_error already ends the path with an unknown field's name.
        (base, Some(name)) if base == name || base.ends_with(&format!(".{name}")) => {
            base.to_string()
        }
        ("", Some(name)) => name.to_string(),
        (base, Some(name)) => format!("{base}.{name}"),
        ("", None) => "body".to_string(),
        (base, None) => base.to_string(),
    }
}
