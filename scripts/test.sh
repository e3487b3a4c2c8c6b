#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, and the
# end-to-end suite against a real broker (tansu), SMTP server and HTTP receiver.
# Works on a fresh machine (Rust toolchain only); a persistent build cache under
# $HOME/.cache makes a warm run incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/appwarden/target}"

# librdkafka is compiled from source with TLS: it needs a C toolchain, make and
# the OpenSSL headers. Install the headers from Debian's packages when missing.
if ! pkg-config --exists openssl 2>/dev/null; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing libssl-dev and pkg-config (needed to build librdkafka with TLS)"
    apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null
  else
    echo "error: OpenSSL headers not found; install libssl-dev and pkg-config" >&2
    exit 1
  fi
fi

# Python packages the tests run as real peers: aiosmtpd (the SMTP server the
# email sink tests deliver to) and duckdb (reads our Parquet history to check it
# against DuckDB). Installed for this user when not importable yet.
need_python_package() {
  local module="$1" package="$2" why="$3"
  if ! python3 -c "import $module" >/dev/null 2>&1; then
    echo "== installing $package ($why)"
    if ! python3 -m pip install --quiet --user "$package" || ! python3 -c "import $module" >/dev/null 2>&1; then
      echo "error: cannot install the Python package $package ($why);" >&2
      echo "       install it by hand: python3 -m pip install --user $package" >&2
      exit 1
    fi
  fi
}
need_python_package aiosmtpd aiosmtpd "the SMTP server the email sink tests deliver to"
need_python_package duckdb duckdb "the reference reader of our Parquet history"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The end-to-end suite runs a real Kafka-compatible broker: tansu, built from
# crates.io once (about 16 minutes on 2 cores) into a cache that later runs reuse.
TANSU_ROOT="${APPWARDEN_TANSU_ROOT:-$HOME/.cache/appwarden/tansu}"
TANSU="$TANSU_ROOT/bin/tansu"
if [ ! -x "$TANSU" ]; then
  echo "== installing the tansu broker 0.6.0 into $TANSU_ROOT (once; the end-to-end suite runs it)"
  CARGO_TARGET_DIR="$TANSU_ROOT/build" \
    cargo install --locked tansu --version 0.6.0 --features dynostore,libsql --root "$TANSU_ROOT"
  rm -rf "$TANSU_ROOT/build"
fi
export APPWARDEN_TANSU="$TANSU"
# The tests start and stop their own brokers; none may outlive an interrupted run.
trap 'pkill -f "$TANSU broker" >/dev/null 2>&1 || true' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test (with the end-to-end suite, marked ignored for a bare cargo test)"
cargo test --locked -- --include-ignored
