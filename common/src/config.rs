//! Layered configuration: defaults < TOML file < `SHADOW_*` environment < command-line flags.
//!
//! Each program declares a clap struct whose fields are all `Option`s carrying `env = "SHADOW_…"`
//! (so clap resolves flag-over-environment) and a typed config struct with serde defaults. [`load`]
//! overlays the set flags/variables on the file and deserializes the result once, at start-up,
//! with an error that names the bad key.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; pass an existing file with --config or unset SHADOW_CONFIG")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}; see docs/operations.md for every option and its default")]
    Invalid(String),
}

/// Builds `C` from an optional TOML file and the options set on the command line or environment.
pub fn load<C: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &impl Serialize,
) -> Result<C, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    let over = toml::Table::try_from(overrides).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    for (k, v) in over {
        table.insert(k, v);
    }
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid(format!("{key}: {}", e.into_inner().message()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct C {
        #[serde(default = "d")]
        listen: String,
        #[serde(default)]
        interval_ms: u64,
    }
    fn d() -> String {
        "127.0.0.1:1".into()
    }
    #[derive(Serialize)]
    struct O {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    #[test]
    fn flags_and_env_win_over_the_file_which_wins_over_defaults() {
        let dir = std::env::temp_dir().join(format!("shadow-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("c.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:2\"\ninterval_ms = 5\n").expect("write");
        let c: C = load(Some(&f), &O { listen: None }).expect("load");
        assert_eq!((c.listen.as_str(), c.interval_ms), ("0.0.0.0:2", 5));
        let c: C = load(
            Some(&f),
            &O {
                listen: Some("1.2.3.4:5".into()),
            },
        )
        .expect("load");
        assert_eq!(c.listen, "1.2.3.4:5");
        let c: C = load(None, &O { listen: None }).expect("load");
        assert_eq!(c.listen, "127.0.0.1:1");
        std::fs::write(&f, "interval_ms = \"soon\"\n").expect("write");
        let err = load::<C>(Some(&f), &O { listen: None }).expect_err("bad type");
        assert!(
            err.to_string().contains("interval_ms") || err.to_string().contains("integer"),
            "{err}"
        );
        std::fs::write(&f, "intervl_ms = 1\n").expect("write");
        let err = load::<C>(Some(&f), &O { listen: None }).expect_err("unknown key");
        assert!(err.to_string().contains("intervl_ms"), "{err}");
    }
}
