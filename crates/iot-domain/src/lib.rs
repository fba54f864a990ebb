//! Domain types and validation shared by every service.
//!
//! Architecture Invariant: this crate does no I/O. It knows nothing of Kafka,
//! MQTT, gRPC or SQL; the services translate at their edges.

pub mod bucket;
pub mod expr;
pub mod payload;
pub mod presence;
pub mod reading;
pub mod reject;
pub mod validate;

pub use payload::{Entry, parse_batch, parse_senml, parse_single};
pub use reading::{Reading, ReadingInput};
pub use reject::{RejectReason, Rejection};
pub use validate::{Limits, parse_device_topic, parse_topic, validate_reading};
