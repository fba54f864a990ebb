//! Device lookups in the caller's scope: nothing of a device is fetched
//! (or, for a UUID, released) before the registry finds it the caller's.

use async_graphql::{Context, Result};
use iot_proto::v1;

use super::{shared, who};
use crate::upstream::{Answer as _, REGISTRY, Upstreams};

/// The caller's device `id` (UUID or device_id), or NOT_FOUND.
pub(super) async fn find_device(ctx: &Context<'_>, id: &str) -> Result<v1::Device> {
    get_device(&shared(ctx).up, who(ctx)?.scope(), id).await
}

/// Device `id` in `scope` (GetDevice), or NOT_FOUND: also what a live
/// stream asks at each poll to know the device is still the caller's.
pub(super) async fn get_device(
    up: &Upstreams,
    scope: iot_proto::Scope,
    id: &str,
) -> Result<v1::Device> {
    up.registry(scope)
        .get_device(v1::GetDeviceRequest { id: id.to_owned() })
        .await
        .answer(REGISTRY)
}

/// `fetch`'s answer for the caller's device `id`. When `id` is a UUID (as
/// the documented example queries pass it), the device check and the fetch start at
/// once, so the check adds no round trip. The answer is released only once
/// the registry has found the device in the caller's scope; a failed check
/// returns its own error (not found) at once and drops the fetch, which
/// cancels the call, so the time to that error is the check's alone and
/// tells nothing about another owner's data. A device the registry found
/// in the caller's scope lately ([`KnownDevices`](super::KnownDevices)) is not checked again.
/// Otherwise (an external `device_id`) the device is looked up first for
/// its UUID.
pub(super) async fn of_device<T, F, Fut>(ctx: &Context<'_>, id: &str, fetch: F) -> Result<T>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    use futures::future::{Either, select};
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        let device = find_device(ctx, id).await?;
        return fetch(device.id).await;
    };
    let uuid = uuid.to_string();
    let (known, scope) = (&shared(ctx).known, who(ctx)?.scope());
    if known.knows(&scope, &uuid) {
        return fetch(uuid).await;
    }
    let check = std::pin::pin!(find_device(ctx, id));
    let fetching = std::pin::pin!(fetch(uuid.clone()));
    // Whichever ends first, the check is awaited before any answer.
    let (device, answer) = match select(check, fetching).await {
        Either::Left((device, fetching)) => (device?, Either::Left(fetching)),
        Either::Right((got, check)) => (check.await?, Either::Right(got)),
    };
    if device.id != uuid {
        // The registry resolved `id` as some device's external id.
        return fetch(device.id).await;
    }
    known.found(&scope, &uuid);
    match answer {
        Either::Left(fetching) => fetching.await,
        Either::Right(got) => got,
    }
}
