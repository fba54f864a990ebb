//! Following device-registry's change stream (`WatchDeviceChanges`), for
//! services that cache devices.

use std::future::Future;
use std::time::Duration;

use iot_proto::v1::{DeviceChange, WatchDeviceChangesRequest};
use tokio_util::sync::CancellationToken;

/// Calls `on_change` with every change (and the stream's first "sync" or
/// "reset"), one at a time, until `shutdown`; reconnects after a second when
/// cut off, resuming where it stopped.
pub async fn follow_device_changes<F, Fut>(
    client: iot_proto::RegistryClient,
    shutdown: CancellationToken,
    mut on_change: F,
) where
    F: FnMut(DeviceChange) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut resume = 0u64;
    loop {
        let mut client = client.clone();
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            s = client.watch_device_changes(WatchDeviceChangesRequest { resume_after: resume }) => s,
        };
        match stream {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return,
                        n = stream.message() => n,
                    };
                    match next {
                        Ok(Some(change)) => {
                            resume = change.resume_after;
                            on_change(change).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "device change stream broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch device changes yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
