//! Graceful shutdown on the operating system's stop signals, the same way in every long-running
//! process: SIGTERM (what Kubernetes and `tessera up` send) and ctrl-c both cancel one token,
//! which the process's serving loops watch to finish what they hold before exiting.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or ctrl-c, after `announce` is logged: the process
/// says what it does with the time it has left (drain, checkpoint, stop serving).
pub fn on_signals(announce: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler can be installed");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("{announce}");
        cancel.cancel();
    });
    token
}
