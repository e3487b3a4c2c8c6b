//! Integration tests: one test crate (every test binary links everything), one module per area.

mod adversarial;
mod cli;
mod delivery;
mod detection;
mod docs;
mod e2e;
mod email_sink;
mod history;
mod http_sinks;
mod kafka_pipeline;
mod logs;
mod observe;
mod support;
