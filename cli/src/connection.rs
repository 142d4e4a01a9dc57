//! Which master to talk to, with which token: flags, then `SHADOW_MASTER_URL` /
//! `SHADOW_API_TOKEN`, then the current (or `--context`) entry of `~/.config/shadow/config.toml`:
//!
//! ```toml
//! current = "prod"
//! [contexts.prod]
//! master = "https://master.example.com:7070"
//! token = "..."
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::CliError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    current: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Context {
    master: Option<String>,
    token: Option<String>,
}

/// Where the config file is: `$SHADOW_CONFIG_FILE`, else `$XDG_CONFIG_HOME/shadow/config.toml`,
/// else `~/.config/shadow/config.toml`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHADOW_CONFIG_FILE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("shadow").join("config.toml"))
}

/// The master's URL and token.
pub fn resolve(
    master: Option<String>,
    token: Option<String>,
    context: Option<&str>,
) -> Result<(String, Option<String>), CliError> {
    let path = config_path();
    let file: File = match path.as_ref().map(std::fs::read_to_string) {
        Some(Ok(text)) => toml::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a valid shadow config: {e}",
                path.as_ref()
                    .map_or_else(String::new, |p| p.display().to_string())
            ))
        })?,
        _ => File::default(),
    };
    let wanted = context.map(str::to_owned).or(file.current.clone());
    let ctx = match &wanted {
        Some(name) => file.contexts.get(name).ok_or_else(|| {
            CliError::Usage(format!(
                "no context {name:?} in {}; the contexts there: {}",
                path.as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
                file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => &Context::default(),
    };
    let master = master
        .or_else(|| std::env::var("SHADOW_MASTER_URL").ok())
        .or_else(|| ctx.master.clone())
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let token = token
        .or_else(|| std::env::var("SHADOW_API_TOKEN").ok())
        .or_else(|| ctx.token.clone());
    Ok((master, token))
}
