//! Tracing set-up: plain human-readable lines on stderr (journald integration arrives with the
//! operations issue). English only; never a secret in a field.

use crate::config::LogConfig;

/// Installs the global subscriber once; later calls are ignored (tests start several apps).
pub fn init(cfg: &LogConfig) {
    // openraft narrates every election and membership step at `info`; operators get its
    // warnings unless they ask for it by name (e.g. `info,openraft=info`).
    let quiet = |f: String| if f.contains("openraft") { f } else { format!("{f},openraft=warn") };
    let filter = std::env::var("LGSP_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(quiet(f)).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(quiet(cfg.level.clone())).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
