//! Tracing set-up shared by the three programs: `SHADOW_LOG` (or `RUST_LOG`) picks the levels,
//! `SHADOW_LOG_FORMAT` the shape: `text` (the default; colours only on a terminal) or `json`
//! (one object per line, spans and their fields included, for log shippers).

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// The output shape `SHADOW_LOG_FORMAT` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Reads `SHADOW_LOG_FORMAT`; anything but `json` or `text` is an error naming both.
pub fn format_from_env() -> Result<Format, String> {
    match std::env::var("SHADOW_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") | Ok("") => Ok(Format::Text),
        Ok("json") => Ok(Format::Json),
        Ok(other) => Err(format!("SHADOW_LOG_FORMAT is {other:?}; use text or json")),
    }
}

/// Installs the global subscriber; harmless if one is installed already (tests). A bad
/// `SHADOW_LOG_FORMAT` falls back to text and says so.
pub fn init(default_filter: &str) {
    let filter = std::env::var("SHADOW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_string());
    let (format, bad) = match format_from_env() {
        Ok(f) => (f, None),
        Err(e) => (Format::Text, Some(e)),
    };
    let builder = fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_target(false);
    let _ = match format {
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Escape codes only where a person reads them, not in journald or a file.
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::io::stdout().is_terminal())
            .try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!("{e}");
    }
}
