//! Signals and graceful drain.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Reads `--config PATH` (or `-c PATH`) from the process arguments.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" || a == "-c" {
            return args.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Runs `service` until it ends or SIGTERM/SIGINT arrives. On a signal the
/// token is cancelled and the service gets `grace` to drain; after that it is
/// abandoned (the process exits).
pub async fn run_until_signal<F, Fut, E>(service: F, grace: Duration) -> Result<(), E>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(service(shutdown.clone()));
    tokio::select! {
        res = &mut task => return flatten(res),
        () = signal() => tracing::info!("shutdown signal received, draining"),
    }
    shutdown.cancel();
    match tokio::time::timeout(grace, &mut task).await {
        Ok(res) => flatten(res),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period over, aborting"
            );
            task.abort();
            Ok(())
        }
    }
}

fn flatten<E>(res: Result<Result<(), E>, tokio::task::JoinError>) -> Result<(), E> {
    match res {
        Ok(r) => r,
        Err(e) => {
            // A panicking service is a bug; surface it as a crash.
            std::panic::resume_unwind(e.into_panic())
        }
    }
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The connections a gRPC server accepts on `listener`, with `TCP_NODELAY`.
/// Without it a small response waits for the client's delayed ACK (Nagle):
/// every call took 40 ms on Linux whatever the work behind it.
pub fn grpc_incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
