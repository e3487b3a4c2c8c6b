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
//! - [`pipeline`]: the per-record stage shared by `run` and `replay` (decode → identity), with dead letters.
//! - [`settings`]: typed configuration (`config/appwarden.toml`, user file, environment).
//! - [`telemetry`]: counters and rate-limited logs of what the pipeline did.

pub mod decode;
pub mod event;
pub mod identity;
pub mod pipeline;
pub mod settings;
pub mod telemetry;
