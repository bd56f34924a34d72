//! Tracing set-up: where log events go and at which level, changeable at run time.
//!
//! Outputs (`[log] format`): `journald` sends each event over journald's native protocol, its
//! fields becoming journal fields named in upper case (`transaction_id` → `TRANSACTION_ID`,
//! SPEC §1), `SYSLOG_IDENTIFIER=lgsp`, `PRIORITY` from the level (error 3, warn 4, info 6,
//! debug and trace 7), `TARGET`, `CODE_FILE`, `CODE_LINE`; `plain` writes one human-readable
//! line per event to stderr; `json` one JSON object per line to stderr; `auto` (the default)
//! means journald when stderr is the journal stream systemd gave the process (`JOURNAL_STREAM`
//! names stderr's device and inode, see systemd.exec(5)), plain otherwise.
//!
//! Invariants: logs are never lost to a missing journald (the layer falls back to stderr and
//! says so); the level filter can be swapped at run time ([`set_level`], used on SIGHUP) but the
//! output cannot; `LGSP_LOG` overrides the configured level; openraft is quieted to warnings
//! unless a filter names it. English only; never a secret in a field.

use std::io::IsTerminal;
use std::sync::OnceLock;

use thiserror::Error;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, Error)]
pub enum LogError {
    #[error("log.level {level:?} is not a log filter: {reason}")]
    Filter { level: String, reason: String },
    #[error("logging was not initialised by this process")]
    NotInitialised,
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Where events go, once `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Plain,
    Json,
}

/// Installs the global subscriber once; later calls are ignored (tests start several apps).
/// Returns the output actually used (journald may have fallen back to plain stderr).
pub fn init(cfg: &LogConfig) -> Output {
    let wanted = resolve(cfg.format, journal_stream_is_stderr());
    let (journald, fallback) = match wanted {
        Output::Journald => match journald_layer() {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let output = if journald.is_some() {
        Output::Journald
    } else if wanted == Output::Json {
        Output::Json
    } else {
        Output::Plain
    };
    let (filter, handle) = reload::Layer::new(filter_for(&cfg.level));
    let plain = (output == Output::Plain).then(|| {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(std::io::stderr().is_terminal())
    });
    let json = (output == Output::Json)
        .then(|| tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(std::io::stderr));
    let installed = tracing_subscriber::registry().with(filter).with(journald).with(plain).with(json).try_init().is_ok();
    if installed {
        let _ = RELOAD.set(handle);
        if let Some(e) = fallback {
            tracing::warn!(error = %e, socket = JOURNAL_SOCKET, "journald is unreachable; logging to stderr instead");
        }
    }
    output
}

/// Replaces the level filter of the running process (SIGHUP). `LGSP_LOG`, when set, still
/// wins: the returned string is the filter now in force.
pub fn set_level(level: &str) -> Result<String, LogError> {
    EnvFilter::try_new(level).map_err(|e| LogError::Filter { level: level.to_owned(), reason: e.to_string() })?;
    let handle = RELOAD.get().ok_or(LogError::NotInitialised)?;
    let effective = effective_level(level);
    handle.reload(filter_for(level)).map_err(|e| LogError::Reload(e.to_string()))?;
    Ok(effective)
}

/// The filter in force for a configured `level`: `LGSP_LOG` if set and valid, else `level`.
pub fn effective_level(level: &str) -> String {
    match std::env::var("LGSP_LOG") {
        Ok(f) if EnvFilter::try_new(&f).is_ok() => f,
        _ => level.to_owned(),
    }
}

/// Whether stderr is the journal stream systemd connected (systemd.exec(5), `JOURNAL_STREAM`).
/// A child whose stderr was redirected inherits the variable but not the stream: it logs plain.
pub fn journal_stream_is_stderr() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else { return false };
    stderr_identity().is_some_and(|id| journal_stream_matches(&var, id))
}

/// `JOURNAL_STREAM` is `DEVICE:INODE` in decimal, as systemd formats `st_dev` and `st_ino`.
pub fn journal_stream_matches(var: &str, (dev, ino): (u64, u64)) -> bool {
    let Some((d, i)) = var.trim().split_once(':') else { return false };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The journald socket the native protocol writes to (fixed by tracing-journald).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn resolve(format: LogFormat, under_journald: bool) -> Output {
    match format {
        LogFormat::Auto if under_journald => Output::Journald,
        LogFormat::Auto | LogFormat::Plain => Output::Plain,
        LogFormat::Journald => Output::Journald,
        LogFormat::Json => Output::Json,
    }
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    // No field prefix: SPEC §1 promises `TRANSACTION_ID`, not `F_TRANSACTION_ID`. Field names
    // are chosen so none is a journal field with a meaning of its own (MESSAGE, PRIORITY, ...).
    // Priorities follow syslog usage: info is Informational (6), not Notice.
    Ok(tracing_journald::layer()?.with_field_prefix(None).with_syslog_identifier("lgsp".into()).with_priority_mappings(PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }))
}

fn filter_for(level: &str) -> EnvFilter {
    // openraft narrates every election and membership step at `info`; operators get its
    // warnings unless they ask for it by name (e.g. `info,openraft=info`).
    let quiet = |f: String| if f.contains("openraft") { f } else { format!("{f},openraft=warn") };
    EnvFilter::try_new(quiet(effective_level(level))).unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"))
}

/// `(st_dev, st_ino)` of fd 2, through a duplicate of it (no unsafe, no /proc).
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_exactly() {
        assert!(journal_stream_matches("64769:123456", (64769, 123456)));
        assert!(journal_stream_matches("64769:123456\n", (64769, 123456)));
        assert!(!journal_stream_matches("64769:123457", (64769, 123456)));
        assert!(!journal_stream_matches("1:123456", (64769, 123456)));
        assert!(!journal_stream_matches("64769", (64769, 123456)));
        assert!(!journal_stream_matches("", (64769, 123456)));
        assert!(!journal_stream_matches("a:b", (64769, 123456)));
    }

    #[test]
    fn auto_means_journald_only_on_the_journal_stream() {
        assert_eq!(resolve(LogFormat::Auto, true), Output::Journald);
        assert_eq!(resolve(LogFormat::Auto, false), Output::Plain);
        assert_eq!(resolve(LogFormat::Plain, true), Output::Plain);
        assert_eq!(resolve(LogFormat::Json, true), Output::Json);
        assert_eq!(resolve(LogFormat::Journald, false), Output::Journald);
    }

    #[test]
    fn stderr_has_an_identity() {
        // The test harness's stderr is a file, pipe or terminal: all have a device and inode.
        assert!(stderr_identity().is_some());
    }
}
