//! Graceful shutdown: one signal shared by every task of a process.

use tokio::sync::watch;

/// A cloneable shutdown signal. [`Shutdown::trigger`] (or SIGTERM/SIGINT via
/// [`shutdown_signal`]) wakes every clone waiting in [`Shutdown::wait`].
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired yet.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx, rx }
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once the signal has fired.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while
        // `self` holds one; either way the wait is over.
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Fires the signal when the process receives SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received");
            this.trigger();
        });
    }
}

/// Completes when the process receives SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Installing handlers only fails outside a Unix runtime; fall
            // back to Ctrl-C, and if even that fails wait forever.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
