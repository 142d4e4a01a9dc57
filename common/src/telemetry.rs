//! Tracing set-up shared by the three programs: `SHADOW_LOG` (or `RUST_LOG`) picks the levels.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber; harmless if one is installed already (tests).
pub fn init(default_filter: &str) {
    let filter = std::env::var("SHADOW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_string());
    let _ = fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_target(false)
        .try_init();
}
