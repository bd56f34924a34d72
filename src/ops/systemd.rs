//! The service manager's side channel (sd_notify(3)): readiness, reload, stop and the watchdog.
//!
//! Messages: `READY=1` (+ `STATUS=`) once every listener is bound and storage is open;
//! `RELOADING=1` + `MONOTONIC_USEC=` when a SIGHUP reload starts and `READY=1` when it ends
//! (the notify-reload protocol, understood by systemd ≥ 253 and harmless before); `STOPPING=1`
//! when the drain starts; `WATCHDOG=1` from [`Watchdog`] while the node is healthy.
//!
//! The watchdog runs on its own OS thread, not on the tokio runtime, so it can judge the
//! runtime: every half `WATCHDOG_USEC` it asks the runtime to run a probe task (which must get a
//! worker, see its timer fire, and then finish a blocking storage read on the blocking pool)
//! and pings only if that answers within a quarter of the interval. A wedged runtime, a
//! storage lock held forever, an exhausted blocking pool or a stopped process (SIGSTOP) stop
//! the pings, and systemd restarts the service after `WatchdogSec=`. At most one probe is in
//! flight: a probe that never finishes is waited for, never stacked.
//!
//! Invariants: without `NOTIFY_SOCKET` every call is a no-op (plain `lgsp serve`, tests, dev);
//! a failed notification is logged once and never stops the node; the watchdog is armed only
//! when `WATCHDOG_USEC` is set and `WATCHDOG_PID`, if set, is this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1` with a status line for `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (required by `Type=notify-reload`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]),
    }
}

/// `STOPPING=1`: the drain has begun.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(&one_line(status))]);
}

/// A status line alone (e.g. why start-up failed, before the process exits).
pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// The watchdog interval systemd expects pings within, if it is armed for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// A blocking check of the node's storage, run on the runtime's blocking pool by the watchdog.
pub type StorageCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The watchdog thread; stops (and joins) when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging every `interval / 2` while the probe passes. `runtime` is the runtime the
    /// node serves on; `storage` is run on its blocking pool.
    pub fn start(interval: Duration, runtime: tokio::runtime::Handle, storage: StorageCheck) -> std::io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("lgsp-watchdog".into()).spawn(move || run(interval, &runtime, &storage, &flag))?;
        Ok(Watchdog { stop, thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The result of one probe of the runtime and storage.
type ProbeResult = Result<(), String>;

fn run(interval: Duration, runtime: &tokio::runtime::Handle, storage: &StorageCheck, stop: &AtomicBool) {
    let period = interval / 2;
    let bound = interval / 4;
    let mut pending: Option<mpsc::Receiver<ProbeResult>> = None;
    let mut healthy = true;
    tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog armed");
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        let rx = pending.take().unwrap_or_else(|| spawn_probe(runtime, storage.clone()));
        let verdict = match rx.recv_timeout(bound) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pending = Some(rx);
                Err(format!("the runtime did not run a probe task within {} ms", bound.as_millis()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the probe task was dropped (runtime shutting down?)".into()),
        };
        match verdict {
            Ok(()) => {
                send(&[NotifyState::Watchdog]);
                if !healthy {
                    tracing::info!("health check passes again; watchdog pings resumed");
                    healthy = true;
                }
            }
            Err(reason) => {
                if healthy {
                    tracing::error!(reason = %reason, "health check failed; watchdog pings withheld (systemd restarts the service if this lasts WatchdogSec)");
                    healthy = false;
                }
            }
        }
        if let Some(rest) = period.checked_sub(tick.elapsed()) {
            std::thread::park_timeout(rest);
        }
    }
}

/// Spawns the probe on the runtime: a worker must pick it up, the timer must fire, and the
/// storage check must finish on the blocking pool.
fn spawn_probe(runtime: &tokio::runtime::Handle, storage: StorageCheck) -> mpsc::Receiver<ProbeResult> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let r = match tokio::task::spawn_blocking(move || storage()).await {
            Ok(r) => r.map_err(|e| format!("storage check failed: {e}")),
            Err(e) => Err(format!("storage check did not complete: {e}")),
        };
        let _ = tx.send(r);
    });
    rx
}

static SEND_FAILED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        if !SEND_FAILED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET); systemd may consider the service failed");
        }
    }
}

/// A status is one line in `systemctl status`; newlines would end the notify field early.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }

    #[test]
    fn probe_passes_on_a_live_runtime_and_reports_storage_errors() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let ok: StorageCheck = Arc::new(|| Ok(()));
        let rx = spawn_probe(rt.handle(), ok);
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
        let bad: StorageCheck = Arc::new(|| Err("registry.redb: I/O error".into()));
        let rx = spawn_probe(rt.handle(), bad);
        let r = rx.recv_timeout(Duration::from_secs(30)).expect("answer");
        assert!(r.is_err_and(|e| e.contains("registry.redb")));
    }

    #[test]
    fn probe_does_not_answer_while_every_worker_is_wedged() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (wedged_tx, wedged_rx) = mpsc::channel::<()>();
        // Blocks the only worker thread, as a task stuck in a blocking call would.
        rt.spawn(async move {
            let _ = wedged_tx.send(());
            let _ = release_rx.recv();
        });
        wedged_rx.recv_timeout(Duration::from_secs(30)).expect("the worker is taken");
        let ok: StorageCheck = Arc::new(|| Ok(()));
        let rx = spawn_probe(rt.handle(), ok);
        assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout));
        let _ = release_tx.send(());
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
    }
}
