//! Which service owns each table and view, and the views through which a
//! service reads another's data. A service writes and reads only its own
//! relations; it reads another service's data only through the views that
//! service publishes for it (its contract: the view keeps its columns
//! while the tables behind it change). `tests/ownership.rs` holds every
//! migration and every service's SQL to this list.

/// A table or view of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Relation {
    pub name: &'static str,
    /// The crate that owns it: the only one that may change it.
    pub owner: &'static str,
    /// Other crates that may read it (views are the contracts).
    pub readers: &'static [&'static str],
}

const fn own(name: &'static str, owner: &'static str) -> Relation {
    Relation {
        name,
        owner,
        readers: &[],
    }
}

/// Every service may read the migration bookkeeping (to check at start
/// that the schema it needs is there).
const EVERYONE: &[&str] = &[
    "device-registry",
    "ingest-writer",
    "alert-engine",
    "mqtt-gateway",
    "graphql-gateway",
    "iotctl",
];

pub const RELATIONS: &[Relation] = &[
    // The migration runner's bookkeeping.
    Relation {
        name: "schema_migrations",
        owner: "iot-db",
        readers: EVERYONE,
    },
    Relation {
        name: "platform_info",
        owner: "iot-db",
        readers: EVERYONE,
    },
    // device-registry: devices, their config, sensors, broker credentials
    // and the change log.
    Relation {
        name: "devices",
        owner: "device-registry",
        // `iotctl status` counts them for the operator.
        readers: &["iotctl"],
    },
    own("device_config", "device-registry"),
    own("sensors", "device-registry"),
    own("device_credentials", "device-registry"),
    own("device_changes", "device-registry"),
    own("device_commands", "device-registry"),
    own("device_state", "device-registry"),
    own("device_presence", "device-registry"),
    own("device_status_counts", "device-registry"),
    own("device_heartbeats", "device-registry"),
    Relation {
        name: "device_retention",
        owner: "device-registry",
        readers: &["ingest-writer"],
    },
    Relation {
        name: "device_owners",
        owner: "device-registry",
        readers: &["ingest-writer", "alert-engine"],
    },
    // ingest-writer: readings, their rollups and per-device latest values.
    Relation {
        name: "sensor_readings",
        owner: "ingest-writer",
        readers: &["iotctl"],
    },
    own("sensor_readings_default", "ingest-writer"),
    own("sensor_readings_1h", "ingest-writer"),
    own("sensor_readings_1d", "ingest-writer"),
    own("sensor_readings_1w", "ingest-writer"),
    own("sensor_readings_1h_live", "ingest-writer"),
    own("sensor_readings_1d_live", "ingest-writer"),
    Relation {
        name: "rollup_watermark",
        owner: "ingest-writer",
        // `iotctl export` stitches rollups and raw rows at the watermark.
        readers: &["iotctl"],
    },
    own("sensor_latest", "ingest-writer"),
    own("ingest_counts", "ingest-writer"),
    Relation {
        name: "archive_files",
        owner: "ingest-writer",
        // `iotctl export|archive` read the archive through ingest-writer's
        // archive module, as `migrate` reads the database.
        readers: &["iotctl"],
    },
    // alert-engine: alerts, their outbox, rules, episodes and webhooks.
    own("device_alerts", "alert-engine"),
    own("alert_events", "alert-engine"),
    own("alert_rules", "alert-engine"),
    own("alert_rule_episodes", "alert-engine"),
    own("alert_webhooks", "alert-engine"),
    own("webhook_deliveries", "alert-engine"),
];

/// The relation called `name`, if the schema has one.
pub fn relation(name: &str) -> Option<&'static Relation> {
    RELATIONS.iter().find(|r| r.name == name)
}
