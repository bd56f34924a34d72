//! Process signals as futures: shutdown (SIGTERM, SIGINT) resolves once, so every server
//! drains the same way; reload (SIGHUP) is a stream, one item per signal.
//!
//! Invariants: [`Terminations`] and [`Hangups`] are registered first thing in `app::run`, long
//! before the node announces readiness, so neither signal ever meets its default disposition
//! (which would kill the process without a drain).

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// A cloneable shutdown signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The trigger side, held by `app`.
pub struct Trigger(watch::Sender<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// SIGTERM (systemd's stop) or SIGINT (Ctrl-C), the drain request. From the moment it is
/// created, neither signal terminates the process outright.
pub struct Terminations {
    term: Signal,
    int: Signal,
}

impl Terminations {
    /// Registers the handlers; needs a running tokio runtime.
    pub fn register() -> std::io::Result<Terminations> {
        Ok(Terminations { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            Some(()) = self.term.recv() => {}
            Some(()) = self.int.recv() => {}
            else => std::future::pending::<()>().await,
        }
    }
}

/// SIGHUP, the reload request (`systemctl reload lgsp`). From the moment it is created, a
/// SIGHUP no longer terminates the process.
pub struct Hangups(Signal);

impl Hangups {
    /// Registers the handler; needs a running tokio runtime.
    pub fn register() -> std::io::Result<Hangups> {
        signal(SignalKind::hangup()).map(Hangups)
    }

    /// Resolves on the next SIGHUP (several signals before a call count as one).
    pub async fn next(&mut self) {
        // `None` only if the signal driver is gone (runtime shutting down): never resolve then.
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}
