//! AppWarden: watches the identities of micro-apps in SSO, gateway and secrets logs.
//!
//! # Layout
//!
//! The modules follow the data flow of `design.md`, one job each; data only
//! moves forward:
//!
//! - [`event`]: the normalized event every stage speaks.
//! - [`decode`]: vendor records (one file per format) into normalized events.

pub mod decode;
pub mod event;
