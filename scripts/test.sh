#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Works on a fresh machine (Rust toolchain only); a persistent build cache under
# $HOME/.cache makes a warm run incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/appwarden/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
