//! Sources: where records come from — Kafka topics (`run`, `demo`) or files (`replay`).

pub mod align;
pub mod file;
pub mod kafka;
