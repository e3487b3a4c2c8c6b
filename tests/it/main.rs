//! Integration tests: one test crate (every test binary links everything), one module per area.

mod cli;
mod detection;
mod docs;
mod kafka_pipeline;
mod support;
