//! The public GraphQL API on the real stack, one module per topic: the
//! documented example tests and queries (`queries`), managing alert rules
//! and webhooks (`mutations`), tenant isolation at every entry point
//! (`tenants`), subscriptions over real GraphQL-over-WebSocket clients of
//! both protocols (`subscriptions`), and limits, a backend down and
//! bounded backend calls (`limits`). Each test runs on a platform and
//! devices of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bounded;
mod commands;
mod export;
mod limits;
mod mutations;
mod presence;
mod queries;
mod subscriptions;
mod support;
mod templates;
mod tenants;
