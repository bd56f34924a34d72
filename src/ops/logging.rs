//! Tracing set-up: plain human-readable lines on stderr (journald integration arrives with the
//! operations issue). English only; never a secret in a field.

use crate::config::LogConfig;

/// Installs the global subscriber once; later calls are ignored (tests start several apps).
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("LGSP_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
