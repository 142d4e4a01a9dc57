//! App specs from files (TOML like `fly.toml`, or JSON) and `KEY=VALUE` changes.

use std::path::Path;

use serde_json::{Map, Value};
use shadow_common::task::TaskSpec;

use crate::CliError;

/// Reads a spec: `.toml` as TOML, anything else as JSON. The master's own validation is also
/// run here, so a mistake is named before anything is sent.
pub fn read(path: &Path) -> Result<TaskSpec, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let value: Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{} is not valid TOML: {e}", path.display())))?
    } else {
        serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{} is not valid JSON: {e}", path.display())))?
    };
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    TaskSpec::from_json(&bytes)
        .map_err(|e| CliError::Usage(format!("{}: {}: {}", path.display(), e.field, e.message)))
}

/// `a.b=value` pairs as a JSON merge patch: the value is JSON when it parses as JSON (numbers,
/// booleans, `null` to remove, lists), else a string.
pub fn patch(pairs: &[String]) -> Result<Value, CliError> {
    let mut patch = Value::Object(Map::new());
    for pair in pairs {
        let (key, raw) = pair.split_once('=').ok_or_else(|| {
            CliError::Usage(format!(
                "{pair:?} is not KEY=VALUE (e.g. idle_timeout_s=60, env.LOG_LEVEL=debug, command=null)"
            ))
        })?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        let mut at = &mut patch;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(CliError::Usage(format!("{key:?} has an empty part")));
            }
            let object = at
                .as_object_mut()
                .ok_or_else(|| CliError::Usage(format!("{key:?} sets inside a value")))?;
            if i + 1 == parts.len() {
                object.insert((*part).to_owned(), value.clone());
                break;
            }
            at = object
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_a_merge_patch() {
        let p = patch(&[
            "idle_timeout_s=60".into(),
            "env.LOG_LEVEL=debug".into(),
            "env.OLD=null".into(),
            "volume.kind=s3".into(),
        ])
        .unwrap();
        assert_eq!(
            p,
            serde_json::json!({"idle_timeout_s": 60, "env": {"LOG_LEVEL": "debug", "OLD": null}, "volume": {"kind": "s3"}})
        );
        assert!(patch(&["novalue".into()]).is_err());
    }

    #[test]
    fn toml_specs_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("app.toml");
        std::fs::write(
            &good,
            "name = \"blog\"\ndomains = [\"blog.example.com\"]\nimage = \"blog:1\"\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        let s = read(&good).unwrap();
        assert_eq!((s.name.as_str(), s.env["A"].as_str()), ("blog", "1"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "name = \"x\"\ndomains = []\nimage = \"x\"\n").unwrap();
        assert!(read(&bad).unwrap_err().to_string().contains("domains"));
    }
}
