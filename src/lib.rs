//! AppWarden: watches the identities of micro-apps in SSO, gateway and secrets logs.
//!
//! # Layout
//!
//! The modules follow the data flow of `design.md`, one job each; data only
//! moves forward:
//!
//! - [`event`]: the normalized event every stage speaks.
//! - [`decode`]: vendor records (one file per format) into normalized events.
//! - [`identity`]: the registry (hot-reloaded) and resolution of actors to micro-apps.
//! - [`detect`]: detector kinds, per-identity baselines, the sharded engine and alerts.
//! - [`pipeline`]: the per-record stage shared by `run` and `replay` (decode → identity), with dead letters.
//! - [`settings`]: typed configuration (`config/appwarden.toml`, user file, environment).
//! - [`telemetry`]: counters and rate-limited logs of what the pipeline did.
//! - [`source`]: Kafka consumer (at-least-once) and file reader (replay) feeding the pipeline.
//! - [`sinks`]: outputs for events and dead letters (Kafka topics, NDJSON files).
//! - [`state`]: snapshots of detector and identity state, consistent with input offsets.
//! - [`deliver`]: alert sinks (webhook, Slack, PagerDuty, email, kill switch) fed by the outbox.
//! - [`history`]: the Parquet history of events and alerts (partitioned, atomic files, retention).
//! - [`query`]: read-only SQL over the history with DataFusion (`appwarden query`, `POST /v1/query`).
//! - [`observe`]: the HTTP listener: Prometheus `/metrics`, `/healthz`, `/readyz`, `POST /v1/query`.
//! - [`daemon`]: wires settings into registry, pipeline, sinks and the Kafka source.
//! - [`generator`]: seeded traffic of micro-apps in vendor formats, with injected incidents (demo, tests, benches).
//! - [`demo`]: the daemon on an embedded Kafka with generated traffic (`appwarden demo`).

pub mod daemon;
pub mod decode;
pub mod deliver;
pub mod demo;
pub mod detect;
pub mod event;
pub mod generator;
pub mod history;
pub mod identity;
pub mod observe;
pub mod pipeline;
pub mod query;
pub mod settings;
pub mod sinks;
pub mod source;
pub mod state;
pub mod telemetry;
