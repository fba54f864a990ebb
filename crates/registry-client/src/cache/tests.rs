//! [`DeviceCache`] against a small in-process DeviceRegistry.

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use iot_proto::v1::device_registry_server::{DeviceRegistry, DeviceRegistryServer};
use tokio::sync::{Semaphore, mpsc};
use tonic::{Request, Response, Status};

use super::*;

/// What the fake registry knows and has been asked.
#[derive(Default)]
struct State {
    devices: Mutex<Vec<v1::Device>>,
    /// GetDevice calls received.
    calls: AtomicUsize,
    /// When set, each GetDevice waits for a permit before answering.
    gate: Option<Arc<Semaphore>>,
    /// The change stream the next WatchDeviceChanges returns.
    changes: Mutex<Option<mpsc::Receiver<Result<DeviceChange, Status>>>>,
}

impl State {
    fn with_devices(n: u128) -> Self {
        let devices = (1..=n)
            .map(|i| v1::Device {
                id: Uuid::from_u128(i).to_string(),
                device_id: format!("dev-{i}"),
                status: "active".into(),
                ..Default::default()
            })
            .collect();
        Self {
            devices: Mutex::new(devices),
            ..Default::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn rename(&self, uuid: Uuid, device_id: &str) {
        let mut devices = self.devices.lock().unwrap();
        let d = devices
            .iter_mut()
            .find(|d| d.id == uuid.to_string())
            .unwrap();
        d.device_id = device_id.into();
    }
}

struct Fake(Arc<State>);

#[tonic::async_trait]
impl DeviceRegistry for Fake {
    async fn get_device(
        &self,
        request: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.0.gate {
            gate.acquire().await.unwrap().forget();
        }
        let id = request.into_inner().id;
        if id == "flaky" {
            return Err(Status::unavailable("registry is down"));
        }
        // As the registry: a platform id first, then an external id.
        let uuid = Uuid::parse_str(&id).map(|u| u.to_string()).ok();
        let devices = self.0.devices.lock().unwrap();
        devices
            .iter()
            .find(|d| Some(&d.id) == uuid.as_ref())
            .or_else(|| devices.iter().find(|d| d.device_id == id))
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no device {id}")))
    }

    type WatchDeviceChangesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DeviceChange, Status>>;

    async fn watch_device_changes(
        &self,
        _: Request<v1::WatchDeviceChangesRequest>,
    ) -> Result<Response<Self::WatchDeviceChangesStream>, Status> {
        let rx = self.0.changes.lock().unwrap().take();
        rx.map(|rx| Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .ok_or_else(|| Status::unavailable("watched already"))
    }

    async fn create_device(
        &self,
        _: Request<v1::CreateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_devices(
        &self,
        _: Request<v1::CreateDevicesRequest>,
    ) -> Result<Response<v1::CreateDevicesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_devices(
        &self,
        _: Request<v1::ListDevicesRequest>,
    ) -> Result<Response<v1::ListDevicesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_device(
        &self,
        _: Request<v1::UpdateDeviceRequest>,
    ) -> Result<Response<v1::Device>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_device(
        &self,
        _: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::DeleteDeviceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_device_config(
        &self,
        _: Request<v1::UpdateDeviceConfigRequest>,
    ) -> Result<Response<v1::DeviceConfig>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_sensors(
        &self,
        _: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::ListSensorsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_sensors_of_devices(
        &self,
        _: Request<v1::ListSensorsOfDevicesRequest>,
    ) -> Result<Response<v1::ListSensorsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn device_status_summary(
        &self,
        _: Request<v1::DeviceStatusSummaryRequest>,
    ) -> Result<Response<v1::DeviceStatusSummaryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn record_activity(
        &self,
        _: Request<v1::RecordActivityRequest>,
    ) -> Result<Response<v1::RecordActivityResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn rotate_credentials(
        &self,
        _: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::MqttCredentials>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke_credentials(
        &self,
        _: Request<v1::GetDeviceRequest>,
    ) -> Result<Response<v1::RevokeCredentialsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn verify_device_credentials(
        &self,
        _: Request<v1::VerifyDeviceCredentialsRequest>,
    ) -> Result<Response<v1::VerifyDeviceCredentialsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// What the tests map a device to.
#[derive(Debug, PartialEq)]
struct Info {
    uuid: Uuid,
    device_id: String,
}

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

/// Serves `state` on a loopback port; a cache of it with `settings`.
async fn cache_of(state: &Arc<State>, settings: Settings) -> DeviceCache<Info> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(DeviceRegistryServer::new(Fake(state.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let client =
        crate::admin_client(&format!("http://{addr}"), &iot_proto::GrpcTls::default()).unwrap();
    DeviceCache::new(client, settings, |uuid, d| Info {
        uuid,
        device_id: d.device_id,
    })
}

fn settings(found_ttl: Option<Duration>, not_found_ttl: Option<Duration>) -> Settings {
    Settings {
        max_capacity: 1000,
        found_ttl,
        not_found_ttl,
    }
}

fn change(kind: &str, uuid: Uuid, device_id: &str) -> DeviceChange {
    DeviceChange {
        kind: kind.into(),
        device_uuid: uuid.to_string(),
        device_id: device_id.into(),
        resume_after: 1,
    }
}

/// Waits (at most 5 s) until `cond` holds.
async fn until(mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

#[test]
fn hits_and_misses_have_their_own_lifetimes() {
    let l = Lifetimes {
        found: Some(Duration::from_secs(60)),
        not_found: Some(Duration::from_secs(5)),
    };
    let now = Instant::now();
    let found = l.entry(Slot::<()>::Found(Arc::new(())), now);
    let alias = l.entry(Slot::<()>::Alias(Uuid::nil(), Arc::new(())), now);
    let missing = l.entry(Slot::<()>::Missing, now);
    assert_eq!(found.expires, Some(now + Duration::from_secs(60)));
    assert_eq!(alias.expires, Some(now + Duration::from_secs(60)));
    assert_eq!(missing.expires, Some(now + Duration::from_secs(5)));
    assert!(missing.live(now + Duration::from_secs(4)));
    assert!(!missing.live(now + Duration::from_secs(5)));
    let forever = Lifetimes {
        found: None,
        not_found: None,
    }
    .entry(Slot::<()>::Missing, now);
    assert!(forever.live(now + Duration::from_secs(86_400 * 365)));
    assert!(kept(None) && kept(Some(Duration::from_secs(1))));
    assert!(!kept(Some(Duration::ZERO)));
}

#[tokio::test]
async fn unknown_devices_expire_sooner_than_known_ones() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, Some(Duration::from_millis(200)))).await;
    let known = cache.get("dev-1").await.unwrap().unwrap();
    assert_eq!(known.uuid, Uuid::from_u128(1));
    assert_eq!(cache.get("ghost").await.unwrap(), None);
    assert_eq!(state.calls(), 2);
    // Both cached.
    assert!(Arc::ptr_eq(
        &known,
        &cache.get("dev-1").await.unwrap().unwrap()
    ));
    assert_eq!(cache.get("ghost").await.unwrap(), None);
    assert_eq!(state.calls(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The unknown device is asked about again, the known one is not.
    assert!(cache.get("dev-1").await.unwrap().is_some());
    assert_eq!(state.calls(), 2);
    assert_eq!(cache.get("ghost").await.unwrap(), None);
    assert_eq!(state.calls(), 3);
}

#[tokio::test]
async fn a_zero_ttl_caches_nothing_and_none_keeps_until_a_change() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(None, Some(Duration::ZERO))).await;
    let uuid = Uuid::from_u128(1);
    assert!(cache.get_uuid(uuid).await.unwrap().is_some());
    assert!(cache.get_uuid(uuid).await.unwrap().is_some());
    assert_eq!(state.calls(), 1);
    assert_eq!(cache.get("ghost").await.unwrap(), None);
    assert_eq!(cache.get("ghost").await.unwrap(), None);
    assert_eq!(state.calls(), 3);
    // `fetch` always asks.
    assert!(cache.fetch("dev-1").await.unwrap().is_some());
    assert_eq!(state.calls(), 4);
}

#[tokio::test]
async fn a_device_fetched_by_external_id_is_found_by_uuid() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, HOUR)).await;
    let uuid = Uuid::from_u128(1);
    let by_external = cache.get("dev-1").await.unwrap().unwrap();
    let by_uuid = cache.get_uuid(uuid).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&by_external, &by_uuid));
    assert_eq!(state.calls(), 1);
    // Another spelling of the UUID is another id, found once.
    let braced = format!("{{{uuid}}}");
    let by_braced = cache.get(&braced).await.unwrap().unwrap();
    assert_eq!(by_braced.device_id, "dev-1");
    assert_eq!(state.calls(), 2);
}

#[tokio::test]
async fn invalidating_either_id_drops_both() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, HOUR)).await;
    let uuid = Uuid::from_u128(1);
    cache.get("dev-1").await.unwrap();
    assert_eq!(state.calls(), 1);

    // By UUID: the external id's entry goes with it.
    cache.invalidate(&uuid.to_string()).await;
    assert!(cache.cached("dev-1").await.is_none());
    assert!(cache.get("dev-1").await.unwrap().is_some());
    assert_eq!(state.calls(), 2);
    assert!(cache.get_uuid(uuid).await.unwrap().is_some());
    assert_eq!(state.calls(), 2);

    // By external id: the UUID's entry goes with it.
    cache.invalidate("dev-1").await;
    assert!(cache.cached(&uuid.to_string()).await.is_none());
    assert!(cache.get_uuid(uuid).await.unwrap().is_some());
    assert_eq!(state.calls(), 3);
}

#[tokio::test]
async fn a_renamed_device_is_not_found_by_its_old_id() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, HOUR)).await;
    let uuid = Uuid::from_u128(1);
    assert!(cache.get("dev-1").await.unwrap().is_some());
    assert_eq!(cache.get("boiler-7").await.unwrap(), None);
    // The change names the new external id only.
    state.rename(uuid, "boiler-7");
    cache.apply(&change("updated", uuid, "boiler-7")).await;
    // The UUID is looked up afresh first: the old id's entry points at an
    // answer that is no longer the UUID's.
    assert_eq!(
        cache.get_uuid(uuid).await.unwrap().unwrap().device_id,
        "boiler-7"
    );
    assert_eq!(cache.get("dev-1").await.unwrap(), None);
    assert_eq!(
        cache.get("boiler-7").await.unwrap().unwrap().uuid,
        uuid,
        "the unknown answer for the new id is dropped too"
    );
}

#[tokio::test]
async fn eviction_keeps_the_cache_full_not_empty() {
    let state = Arc::new(State::with_devices(1000));
    let mut s = settings(HOUR, HOUR);
    s.max_capacity = 100;
    let cache = cache_of(&state, s).await;
    // A device that reports all the time among many that report once.
    let popular = Uuid::from_u128(1);
    for i in 2..=1000 {
        cache.get_uuid(popular).await.unwrap();
        cache.get_uuid(Uuid::from_u128(i)).await.unwrap();
    }
    let kept = cache.entries.len();
    // Two entries a device, with the room over that the shards get
    // (`sized`: 346 entries for 100 devices).
    assert!(kept <= 346, "{kept} entries past a capacity of 100 devices");
    assert!(
        kept >= 50,
        "only {kept} entries kept: the cache was emptied"
    );
    // The device asked for most is still there.
    let calls = state.calls();
    cache.get_uuid(popular).await.unwrap();
    assert_eq!(state.calls(), calls);
}

#[tokio::test]
async fn a_fleet_as_large_as_the_capacity_fits_when_looked_up_by_external_id() {
    let state = Arc::new(State::with_devices(1000));
    let mut s = settings(HOUR, HOUR);
    s.max_capacity = 1000;
    let cache = cache_of(&state, s).await;
    // Each device is two entries: its external id's and its UUID's.
    for i in 1..=1000 {
        cache.get(&format!("dev-{i}")).await.unwrap().unwrap();
    }
    let calls = state.calls();
    for i in 1..=1000 {
        cache.get(&format!("dev-{i}")).await.unwrap().unwrap();
    }
    assert_eq!(state.calls(), calls, "devices of the fleet were evicted");
}

#[tokio::test]
async fn concurrent_misses_make_one_call() {
    let gate = Arc::new(Semaphore::new(0));
    let state = Arc::new(State {
        gate: Some(gate.clone()),
        ..State::with_devices(1)
    });
    let cache = Arc::new(cache_of(&state, settings(HOUR, HOUR)).await);
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get("dev-1").await })
        })
        .collect();
    until(async || state.calls() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state.calls(), 1);
    gate.add_permits(100);
    let mut answers = Vec::new();
    for l in lookups {
        answers.push(l.await.unwrap().unwrap().unwrap());
    }
    assert!(answers.iter().all(|a| Arc::ptr_eq(a, &answers[0])));
    assert_eq!(state.calls(), 1);
}

#[tokio::test]
async fn an_answer_fetched_across_a_change_is_not_cached() {
    let gate = Arc::new(Semaphore::new(0));
    let state = Arc::new(State {
        gate: Some(gate.clone()),
        ..State::with_devices(2)
    });
    let cache = Arc::new(cache_of(&state, settings(HOUR, HOUR)).await);
    let uuid = Uuid::from_u128(1);
    let lookup = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get("dev-1").await })
    };
    until(async || state.calls() == 1).await;
    // The registry answered before this change; the answer arrives after.
    cache.apply(&change("config", uuid, "dev-1")).await;
    gate.add_permits(100);
    let answer = lookup.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.uuid, uuid, "the answer is still returned");
    assert!(cache.cached("dev-1").await.is_none());
    assert!(cache.cached(&uuid.to_string()).await.is_none());
    cache.get("dev-1").await.unwrap();
    assert_eq!(state.calls(), 2, "asked again");
    // Without a change in between, an answer is kept.
    cache.get("dev-1").await.unwrap();
    assert_eq!(state.calls(), 2);
}

#[tokio::test]
async fn registry_errors_are_returned_and_not_cached() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, HOUR)).await;
    for calls in 1..=2 {
        let e = cache.get("flaky").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert_eq!(state.calls(), calls);
    }
}

#[tokio::test]
async fn the_change_stream_drops_changed_devices_and_resets() {
    let (tx, rx) = mpsc::channel(16);
    let state = Arc::new(State {
        changes: Mutex::new(Some(rx)),
        ..State::with_devices(2)
    });
    let cache = Arc::new(cache_of(&state, settings(HOUR, HOUR)).await);
    let stop = CancellationToken::new();
    let follower = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move { cache.follow_changes(stop).await })
    };
    tx.send(Ok(change("sync", Uuid::nil(), ""))).await.unwrap();
    cache.get("dev-1").await.unwrap();
    cache.get("dev-2").await.unwrap();
    assert!(cache.cached("dev-1").await.is_some());
    tx.send(Ok(change("deleted", Uuid::from_u128(1), "dev-1")))
        .await
        .unwrap();
    until(async || cache.cached("dev-1").await.is_none()).await;
    assert!(cache.cached("dev-2").await.is_some());
    tx.send(Ok(change("reset", Uuid::nil(), ""))).await.unwrap();
    until(async || cache.cached("dev-2").await.is_none()).await;
    stop.cancel();
    follower.await.unwrap();
}

#[tokio::test]
async fn lookups_are_counted() {
    let state = Arc::new(State::with_devices(1));
    let cache = cache_of(&state, settings(HOUR, HOUR)).await;
    let registry = Registry::new();
    cache.register_metrics(&registry).unwrap();
    cache.get("dev-1").await.unwrap();
    cache.get("dev-1").await.unwrap();
    cache.get_uuid(Uuid::from_u128(1)).await.unwrap();
    let counts: Vec<(String, f64)> = registry
        .gather()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            (
                m.get_label()[0].value().to_owned(),
                m.get_counter().get_value(),
            )
        })
        .collect();
    assert_eq!(counts, [("hit".to_owned(), 2.0), ("miss".to_owned(), 1.0)]);
}
